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
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from threading import Lock
from typing import Any, Protocol

from digest.settings import Settings

TASK_DELIVER_BATCH = "digest.deliver_batch"
TASK_ITEM_PUBLISHED = "digest.item_published"
TASK_PLAN_ALERTS = "digest.plan_alerts"
TASK_SEND_CONFIRMATION = "digest.send_confirmation"


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


def plan_alerts(settings: Settings) -> list[int]:
    """The beat's part of debounced alerts: every window that has closed; the ids to send."""
    from digest.db import session_scope
    from digest.selection import plan_due_alerts

    with session_scope(settings.database_url) as session:
        runs = plan_due_alerts(session, settings=settings)
    return [delivery_id for run in runs for delivery_id in run.pending_ids]


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


_clients: dict[str, Any] = {}
_clients_lock = Lock()


def _client(broker_url: str) -> Any:
    """One Celery client (a producer only: it runs no task) per broker URL."""
    from celery import Celery

    with _clients_lock:
        client = _clients.get(broker_url)
        if client is None:
            client = Celery("digest-client", broker=broker_url, set_as_current=False)
            client.conf.update(task_serializer="json", accept_content=["json"],
                               broker_connection_retry_on_startup=True)
            _clients[broker_url] = client
        return client


def queue_for(settings: Settings) -> TaskQueue:
    """The broker when one is configured, else the work in this process."""
    return BrokerQueue(settings) if settings.broker_url else InProcessQueue(settings)
