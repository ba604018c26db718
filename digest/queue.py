"""The queue interface: how the library asks for work to be done later, elsewhere.

``digest`` never imports ``workers``. It names the work (send these deliveries, announce
these items, mail this confirmation) through a ``TaskQueue``:

- ``BrokerQueue`` sends the task by name to the broker (``DIGEST_BROKER_URL``); the Celery
  workers in ``workers/`` register the tasks under these same names (``TASK_*`` below).
- ``InProcessQueue`` does the work at once, in this process, with the same ``digest``
  functions the tasks call: what the demo and a broker-less install use.

Callers enqueue only after the transaction that created the rows has committed, or a
worker could look for rows it cannot see yet. A task that is lost anyway (a broker restart)
is found again by the periodic sweep: the database, not the broker, is the record.

The periodic work is here too, one function a periodic task (``send_due_slots``,
``send_due_alerts``, ``retry_deferred``, ``sweep_lost_work``): the beat's tasks in
``workers/`` call them, and so does ``digest tick``, which does one pass in-process where
there is no broker and so no beat (rule N3).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from threading import Lock
from typing import TYPE_CHECKING, Any, Protocol

# Imported with this module, never first inside a request's thread: Celery's package loads
# its names lazily, and threads importing it at the same moment can fail (see ``_prepare``).
from celery import Celery

from digest.settings import Settings

if TYPE_CHECKING:  # the stages import this module; at run time they are imported in calls
    from digest.records import Swept
    from digest.selection import SlotPlan

TASK_DELIVER_BATCH = "digest.deliver_batch"
TASK_ITEM_PUBLISHED = "digest.item_published"
TASK_PLAN_ALERTS = "digest.plan_alerts"
TASK_SEND_CONFIRMATION = "digest.send_confirmation"


def maintenance_queue(settings: Settings) -> str:
    """The queue of the beat's periodic work (sweeps, retries, the tick, pruning): a queue of
    its own, so a sweep never waits behind a backlog of deliveries in ``task_queue``. Every
    worker consumes it besides the ones its ``-Q`` names (``workers.celery_app``)."""
    return f"{settings.task_queue}.maintenance"


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    ids = list(ids)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


class TaskQueue(Protocol):
    def deliver(self, delivery_ids: Sequence[int]) -> int:
        """Send these deliveries, one task per batch; returns how many tasks."""
        ...

    def deliver_at(self, delivery_ids: Sequence[int], when: datetime) -> int:
        """Send these deliveries at ``when`` (rows a rate limit deferred to then)."""
        ...

    def publish_items(self, item_ids: Sequence[int]) -> None:
        """The ``item_published`` event of each new item (immediate alerts)."""
        ...

    def send_confirmation(self, subscriber_id: int) -> None:
        """The double opt-in (or "new link") email to one subscriber."""
        ...


class InProcessQueue:
    """Runs the work now, in this process (no broker configured)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def deliver(self, delivery_ids: Sequence[int]) -> int:
        from digest.delivery import send_deliveries

        chunks = batches(delivery_ids, self.settings.batch_size)
        for chunk in chunks:
            later = send_deliveries(chunk, settings=self.settings).later
            # No worker will come back for rows a rate limit deferred: this process, the
            # sender itself, waits for them (the demo, a broker-less install).
            while later:
                when, ids = later.pop(0)
                later = sorted(later + self._send_at(ids, when))
        return len(chunks)

    def _send_at(self, ids: list[int], when: datetime) -> list[tuple[datetime, list[int]]]:
        from digest.delivery import send_deliveries
        from digest.models import utcnow

        time.sleep(max(0.0, (when - utcnow()).total_seconds()))
        return send_deliveries(ids, settings=self.settings).later

    def deliver_at(self, delivery_ids: Sequence[int], when: datetime) -> int:
        later = self._send_at(list(delivery_ids), when)
        return 1 + sum(self.deliver_at(ids, at) for at, ids in later)

    def publish_items(self, item_ids: Sequence[int]) -> None:
        # No beat comes back later in-process: the items announced together are one alert.
        if item_ids:
            self.deliver(announce_item(int(max(item_ids)), self.settings, wait=False))

    def send_confirmation(self, subscriber_id: int) -> None:
        from digest.delivery import send_confirmation

        send_confirmation(int(subscriber_id), settings=self.settings)


def announce_item(item_id: int, settings: Settings, *, wait: bool = True) -> list[int]:
    """A new item (committed) was announced: plan the alerts whose debounce window has closed
    (``plan_due_alerts``; ``wait=False`` closes an open one now); the delivery ids to send.
    An item still inside its window is planned later, by the beat's alerts task."""
    from digest.db import session_scope
    from digest.models import Item
    from digest.selection import plan_due_alerts

    with session_scope(settings.database_url) as session:
        item = session.get(Item, item_id)
        since = item.ingested_at if item is not None else None
        runs = plan_due_alerts(session, settings=settings, wait=wait, since=since)
    return [delivery_id for run in runs for delivery_id in run.pending_ids]


# --- The beat's periodic work: one function a periodic task, each planning or finding rows
# and handing them to ``queue_for(settings)`` after its commit. The Celery tasks call these,
# and so does ``digest tick`` (in-process: the whole pass is done when it returns).


def send_due_slots(settings: Settings, *,
                   now: datetime | None = None) -> dict[str, list[SlotPlan]]:
    """The tick: each frequency's due slots (this hour's and any missed since the last one
    planned, up to DIGEST_CATCH_UP_HOURS back; late ones held, never sent) planned and sent,
    each chunk as soon as its transaction commits."""
    from digest.db import session_scope
    from digest.selection import plan_due_slots

    queue = queue_for(settings)

    def send_chunk(ids: list[int]) -> None:
        queue.deliver(ids)

    planned: dict[str, list[SlotPlan]] = {}
    for frequency in ("weekly", "daily"):
        with session_scope(settings.database_url) as session:
            plans = plan_due_slots(session, frequency, now=now, settings=settings,
                                   on_chunk=send_chunk)
        for plan in plans:  # what no chunk handed over (nothing for a held run)
            queue.deliver(plan.run.pending_ids)
        planned[frequency] = plans
    return planned


def send_due_alerts(settings: Settings) -> list[int]:
    """Debounced alerts: every alert window that has closed, planned and sent; their ids."""
    from digest.db import session_scope
    from digest.selection import plan_due_alerts

    with session_scope(settings.database_url) as session:
        runs = plan_due_alerts(session, settings=settings)
    pending = [delivery_id for run in runs for delivery_id in run.pending_ids]
    queue_for(settings).deliver(pending)
    return pending


def retry_deferred(settings: Settings) -> list[int]:
    """Deferred rows whose retry is due, sent again; their ids."""
    from digest.db import session_scope
    from digest.records import due_for_retry

    with session_scope(settings.database_url) as session:
        due = due_for_retry(session)
    queue_for(settings).deliver(due)
    return due


def sweep_lost_work(settings: Settings) -> Swept:
    """Lost work found again from the database (a dead worker's leases, rows whose task a
    broker restart dropped, runs left open or too late) and its rows sent again."""
    from digest.db import session_scope
    from digest.records import sweep

    with session_scope(settings.database_url) as session:
        found = sweep(session, settings)
    queue = queue_for(settings)
    queue.deliver(found.recovered + found.orphaned)
    resume_stopped_runs(settings)
    return found


def resume_stopped_runs(settings: Settings, *, now: datetime | None = None) -> list[int]:
    """Runs left ``planning`` for a while (their planner stopped: a full disk, a lost
    connection, a killed command), planned on and sent; the ids of the runs. The sweep calls
    it, so such a run moves within seconds, not at the next tick."""
    from digest.db import session_scope
    from digest.models import utcnow
    from digest.selection import resume_stopped_planning

    queue = queue_for(settings)

    def send_chunk(ids: list[int]) -> None:
        queue.deliver(ids)

    started_before = (now or utcnow()) - timedelta(seconds=max(30, settings.sweep_seconds))
    resumed: list[int] = []
    for frequency in ("weekly", "daily"):
        with session_scope(settings.database_url) as session:
            plans = resume_stopped_planning(session, frequency, settings=settings,
                                            on_chunk=send_chunk,
                                            started_before=started_before)
        for plan in plans:
            queue.deliver(plan.run.pending_ids)
            if plan.run.run_id is not None:
                resumed.append(plan.run.run_id)
    return resumed


class BrokerQueue:
    """Sends tasks by name to the broker, for the Celery workers to run."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client = _client(settings.broker_url or "")

    def _send(self, name: str, *args: Any) -> None:
        self._client.send_task(name, args=list(args), queue=self.settings.task_queue)

    def deliver(self, delivery_ids: Sequence[int]) -> int:
        chunks = batches(delivery_ids, self.settings.batch_size)
        for chunk in chunks:
            self._send(TASK_DELIVER_BATCH, chunk)
        return len(chunks)

    def deliver_at(self, delivery_ids: Sequence[int], when: datetime) -> int:
        # A short countdown (a rate limit's seconds), not a long one: the retry sweep is the
        # record, and finds the rows if this task is lost.
        self._client.send_task(TASK_DELIVER_BATCH, args=[list(delivery_ids)],
                               queue=self.settings.task_queue, eta=when)
        return 1

    def publish_items(self, item_ids: Sequence[int]) -> None:
        for item_id in item_ids:
            self._send(TASK_ITEM_PUBLISHED, int(item_id))

    def send_confirmation(self, subscriber_id: int) -> None:
        self._send(TASK_SEND_CONFIRMATION, int(subscriber_id))


_clients: dict[str, Celery] = {}
_clients_lock = Lock()


def _client(broker_url: str) -> Celery:
    """One Celery client (a producer only: it runs no task) per broker URL, made ready to
    send (``_prepare``) before anyone else can use it."""
    with _clients_lock:
        client = _clients.get(broker_url)
        if client is None:
            client = Celery("digest-client", broker=broker_url, set_as_current=False)
            client.conf.update(task_serializer="json", accept_content=["json"],
                               broker_connection_retry_on_startup=True)
            _prepare(client)
            _clients[broker_url] = client
        return client


def _prepare(client: Celery) -> None:
    """Build now what Celery builds on its first send from its lazily loaded modules: the
    message router, the result class and the event dispatcher. Built by the first requests
    of a web server's threads at once, those lazy imports raced ("cannot import name
    'Celery' from 'celery'", a 500). Nothing here connects to the broker. The producer pool
    is left to the first send: ``kombu.pools.reset()`` (``workers.celery_app.configure``)
    closes every pool made before it, and Celery makes a new one only when it has none."""
    client.amqp.router  # noqa: B018  (each property builds and caches its part)
    client.AsyncResult  # noqa: B018
    client.events.Dispatcher  # noqa: B018


def queue_for(settings: Settings) -> TaskQueue:
    """The broker when one is configured, else the work in this process."""
    return BrokerQueue(settings) if settings.broker_url else InProcessQueue(settings)
