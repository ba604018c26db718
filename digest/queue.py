"""The queue interface: how the library asks for work to be done later, elsewhere.

``digest`` never imports ``workers``. It names the work (send these deliveries, announce
these items, mail this confirmation) through a ``TaskQueue``:

- ``BrokerQueue`` sends the task by name to the broker (``DIGEST_BROKER_URL``); the Celery
  workers in ``workers/`` register the tasks under these same names (``TASK_*`` below).
- ``digest.delivery.periodic.InProcessQueue`` does the work at once, in this process, with
  the same ``digest`` functions the tasks call: what the demo and a broker-less install use.
  ``digest.delivery.periodic.queue_for(settings)`` picks one of the two; it is a stage's
  module because the work it runs is the stages' (the shared top imports no stage).

Callers enqueue only after the transaction that created the rows has committed, or a
worker could look for rows it cannot see yet. A task that is lost anyway (a broker restart)
is found again by the periodic sweep: the database, not the broker, is the record.

The periodic work (``send_due_slots``, ``send_due_alerts``, ``retry_deferred``,
``sweep_lost_work``) is ``digest.delivery.periodic``'s: the beat's tasks in ``workers/`` call
it, and so does ``digest tick`` (rule N3).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from threading import Lock
from typing import Any, Protocol

# Imported with this module, never first inside a request's thread: Celery's package loads
# its names lazily, and threads importing it at the same moment can fail (see ``_prepare``).
from celery import Celery

from digest.settings import Settings

TASK_DELIVER_BATCH = "digest.deliver_batch"
TASK_ITEM_PUBLISHED = "digest.item_published"
TASK_PLAN_ALERTS = "digest.plan_alerts"
TASK_PLAN_RUN = "digest.plan_run"
TASK_POLL_SOURCES = "digest.poll_sources"
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

    def plan_run(self, run_id: int, planners: int) -> None:
        """``planners`` more planners of a run whose chunks are laid out and committed (the
        workers' ``plan_run`` tasks); none in-process: the caller plans every chunk."""
        ...

    def send_confirmation(self, subscriber_id: int) -> None:
        """The double opt-in (or "new link") email to one subscriber."""
        ...


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

    def plan_run(self, run_id: int, planners: int) -> None:
        # The maintenance queue: a planner must not wait behind the deliveries of the chunks
        # planned already.
        for _ in range(planners):
            self._client.send_task(TASK_PLAN_RUN, args=[int(run_id)],
                                   queue=maintenance_queue(self.settings))

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
