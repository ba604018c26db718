"""The work a queue stands for, done in this process, and the beat's periodic work.

``InProcessQueue`` runs the tasks' work at once with the same functions the Celery tasks
call: what the demo, ``digest tick`` and a broker-less install use. ``queue_for(settings)``
is the one way to get a queue: ``digest.queue.BrokerQueue`` when a broker is configured,
else an ``InProcessQueue``. Both live here, a stage's module, because the work they run is
the stages' (selection plans, delivery sends, records finds what was lost) and the shared
top (``digest.queue``: the interface, the task names, the broker client) imports no stage.

The periodic work, one function a periodic task, each planning or finding rows and handing
them to ``queue_for(settings)`` after its commit: the beat's tasks in ``workers/`` call
these, and so does ``digest tick`` (in-process: the whole pass is done when it returns).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from digest.db import session_scope
from digest.delivery.confirmations import send_confirmation
from digest.delivery.send import send_deliveries
from digest.ingest.polling import PollOutcome, poll_due
from digest.models import Item, utcnow
from digest.queue import BrokerQueue, TaskQueue, batches
from digest.records import Swept, due_for_retry, sweep
from digest.selection import (
    RunShared,
    SlotPlan,
    plan_due_alerts,
    plan_due_slots,
    plan_run_chunks,
    resume_stopped_planning,
)
from digest.settings import Settings


class InProcessQueue:
    """Runs the work now, in this process (no broker configured)."""
    def __init__(self, settings: Settings):
        self.settings = settings

    def deliver(self, delivery_ids: Sequence[int]) -> int:
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
        send_confirmation(int(subscriber_id), settings=self.settings)

    def plan_run(self, run_id: int, planners: int) -> None:
        """Nothing: in this process the planner that laid out the run plans every chunk."""


def share_planning(queue: TaskQueue, settings: Settings) -> RunShared:
    """What a planner calls once a run's chunks are on record: ``DIGEST_PLANNING_WORKERS``
    planners in all (it is one), the others the workers' ``plan_run`` tasks."""
    def share(run_id: int) -> None:
        if settings.planning_workers > 1:
            queue.plan_run(run_id, settings.planning_workers - 1)
    return share


def plan_run(run_id: int, settings: Settings) -> int:
    """One more planner of a run (the ``plan_run`` task): chunks nobody holds, each enqueued
    as soon as it commits; how many deliveries it planned to send."""
    queue = queue_for(settings)
    planned: list[int] = []

    def send_chunk(ids: list[int]) -> None:
        planned.extend(ids)
        queue.deliver(ids)

    with session_scope(settings.database_url) as session:
        plan_run_chunks(session, run_id, settings=settings, on_chunk=send_chunk)
    return len(planned)


def announce_item(item_id: int, settings: Settings, *, wait: bool = True) -> list[int]:
    """A new item (committed) was announced: plan the alerts whose debounce window has closed
    (``plan_due_alerts``; ``wait=False`` closes an open one now); the delivery ids to send.
    An item still inside its window is planned later, by the beat's alerts task."""
    with session_scope(settings.database_url) as session:
        item = session.get(Item, item_id)
        since = item.ingested_at if item is not None else None
        runs = plan_due_alerts(session, settings=settings, wait=wait, since=since)
    return [delivery_id for run in runs for delivery_id in run.pending_ids]


# --- The beat's periodic work.


def send_due_slots(settings: Settings, *,
                   now: datetime | None = None) -> dict[str, list[SlotPlan]]:
    """The tick: each frequency's due slots (this hour's and any missed since the last one
    planned, up to DIGEST_CATCH_UP_HOURS back; late ones held, never sent) planned and sent,
    each chunk as soon as its transaction commits."""
    queue = queue_for(settings)

    def send_chunk(ids: list[int]) -> None:
        queue.deliver(ids)

    planned: dict[str, list[SlotPlan]] = {}
    for frequency in ("weekly", "daily"):
        with session_scope(settings.database_url) as session:
            plans = plan_due_slots(session, frequency, now=now, settings=settings,
                                   on_chunk=send_chunk, share=share_planning(queue, settings))
        for plan in plans:  # what no chunk handed over (nothing for a held run)
            queue.deliver(plan.run.pending_ids)
        planned[frequency] = plans
    return planned


def send_due_alerts(settings: Settings) -> list[int]:
    """Debounced alerts: every alert window that has closed, planned and sent; their ids."""
    with session_scope(settings.database_url) as session:
        runs = plan_due_alerts(session, settings=settings)
    pending = [delivery_id for run in runs for delivery_id in run.pending_ids]
    queue_for(settings).deliver(pending)
    return pending


def retry_deferred(settings: Settings) -> list[int]:
    """Deferred rows whose retry is due, sent again; their ids."""
    with session_scope(settings.database_url) as session:
        due = due_for_retry(session)
    queue_for(settings).deliver(due)
    return due


def sweep_lost_work(settings: Settings) -> Swept:
    """Lost work found again from the database (a dead worker's leases, rows whose task a
    broker restart dropped, runs left open or too late) and its rows sent again."""
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


def poll_due_sources(settings: Settings, *, now: datetime | None = None,
                     all_sources: bool = False) -> list[PollOutcome]:
    """The beat's ``poll_sources`` task and ``digest tick``: every due registered source
    polled (``ingest.polling``), its new items announced once committed."""
    return poll_due(settings, now=now, all_sources=all_sources, queue=queue_for(settings))


def queue_for(settings: Settings) -> TaskQueue:
    """The broker when one is configured, else the work in this process."""
    return BrokerQueue(settings) if settings.broker_url else InProcessQueue(settings)
