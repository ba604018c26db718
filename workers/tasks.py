"""Thin tasks: parse arguments, call a ``digest`` function, enqueue follow-ups, return.

A task is an edge: it reads the settings once (``get_settings()``) and passes them down.

Every task is safe to run twice: planning is unique per slot, sending claims rows first.
Follow-up tasks are enqueued (through ``digest.delivery.periodic.queue_for``, under the
names ``digest.queue`` defines) only after the transaction that created their rows committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy.exc

from digest import delivery, subscribers
from digest.db import session_scope
from digest.delivery.periodic import (
    announce_item,
    plan_run,
    poll_due_sources,
    queue_for,
    send_due_alerts,
    send_due_slots,
    sweep_lost_work,
)
from digest.delivery.periodic import retry_deferred as send_retries
from digest.queue import (
    TASK_DELIVER_BATCH,
    TASK_ITEM_PUBLISHED,
    TASK_PLAN_ALERTS,
    TASK_PLAN_RUN,
    TASK_POLL_SOURCES,
    TASK_SEND_CONFIRMATION,
)
from digest.settings import Settings, get_settings
from workers.celery_app import app

MAX_RETRIES = 3
# A task that cannot reach the database (down, a partition, every connection slot taken) goes
# back to the queue and is tried again after 2, 4, 8, ... s (at most a minute, randomised so
# the workers do not all come back at once), DATABASE_RETRIES times: about four minutes
# before the sweep is left to find its rows. Every task is safe to run again. The periodic
# tasks other than the tick do not: the beat sends the next one within a minute anyway.
DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
DATABASE_RETRIES = 8
DB_RETRY: dict[str, Any] = {
    "autoretry_for": DATABASE_DOWN, "retry_backoff": 2, "retry_backoff_max": 60,
    "retry_jitter": True, "retry_kwargs": {"max_retries": DATABASE_RETRIES},
}


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def enqueue_deliveries(delivery_ids: list[int], settings: Settings) -> int:
    """One deliver_batch task per batch of ids (each batch shares one SMTP connection)."""
    return queue_for(settings).deliver(delivery_ids)


@app.task(name="digest.tick", max_retries=MAX_RETRIES, **DB_RETRY)
def tick(now: str | None = None) -> dict:
    """Plan the weekly and daily slots due (this hour's and any missed since the last one
    planned) and send them; a run past its send-by deadline is held for an operator."""
    planned = send_due_slots(get_settings(), now=_when(now))
    result = {}
    for frequency, plans in planned.items():
        slots = [{"slot": p.slot.isoformat(), "run_id": p.run.run_id, "created": p.run.created,
                  "pending": p.run.planned, "skipped": p.run.skipped, "held": p.held}
                 for p in plans]
        result[frequency] = {**slots[-1], "slots": slots}  # the current slot's, and every slot's
    return result


@app.task(name=TASK_DELIVER_BATCH, max_retries=MAX_RETRIES, **DB_RETRY)
def deliver_batch(delivery_ids: list[int]) -> dict:
    settings = get_settings()
    result = delivery.send_deliveries([int(i) for i in delivery_ids], settings=settings)
    # Rows a rate limit deferred go again when it allows, not at the next retry sweep.
    if result.later:
        queue = queue_for(settings)
        for when, ids in result.later:
            queue.deliver_at(ids, when)
    return {"claimed": result.claimed, "sent": result.sent, "deferred": result.deferred,
            "failed": result.failed, "cancelled": result.cancelled}


@app.task(name="digest.retry_deferred", max_retries=MAX_RETRIES)
def retry_deferred() -> int:
    return len(send_retries(get_settings()))


@app.task(name="digest.sweep", max_retries=MAX_RETRIES)
def sweep() -> dict:
    """Find lost work again: rows of a dead worker, rows whose task the broker lost, runs
    left open. The database is the record, so this needs nothing from the broker."""
    found = sweep_lost_work(get_settings())
    return {"recovered": len(found.recovered), "orphaned": len(found.orphaned),
            "runs_finished": len(found.runs_finished), "runs_held": len(found.runs_held)}


@app.task(name="digest.purge_unconfirmed", max_retries=MAX_RETRIES)
def purge_unconfirmed() -> int:
    with session_scope(get_settings().database_url) as session:
        return subscribers.purge_unconfirmed(session)


@app.task(name="digest.prune", max_retries=MAX_RETRIES)
def prune() -> dict:
    """Nightly retention: the delivery log and the ledger, as far as is safe."""
    from digest.delivery.retention import prune as prune_log

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        report = prune_log(session, settings)
    return {"deliveries": report.deliveries, "ledger_rows": report.ledger_rows,
            "runs": report.runs, "kept_for_ledger": report.kept_for_ledger}


@app.task(name=TASK_ITEM_PUBLISHED, max_retries=MAX_RETRIES, **DB_RETRY)
def item_published(item_id: int) -> dict:
    """The event for a new item: alerts to subscribers who want every item at once."""
    settings = get_settings()
    pending = announce_item(int(item_id), settings)
    enqueue_deliveries(pending, settings)
    return {"pending": len(pending)}


@app.task(name=TASK_PLAN_RUN, max_retries=MAX_RETRIES, **DB_RETRY)
def plan_run_chunks(run_id: int) -> dict:
    """One more planner of a run being planned: the chunks nobody holds, each sent as soon
    as it commits. Safe twice and after any death: a chunk is planned once (ADR 0032)."""
    return {"pending": plan_run(int(run_id), get_settings())}


@app.task(name=TASK_PLAN_ALERTS, max_retries=MAX_RETRIES)
def plan_due_alerts() -> dict:
    """Debounced alerts: plan and send every alert window that has closed."""
    return {"pending": len(send_due_alerts(get_settings()))}


@app.task(name="digest.websub_maintain", max_retries=MAX_RETRIES)
def websub_maintain() -> dict:
    """WebSub subscriptions: subscribe sources that name a hub, renew leases near their end,
    give up on hubs that never verified (those sources are polled as usual)."""
    from digest.ingest.websub import maintain

    return maintain(get_settings()).as_dict()


@app.task(name=TASK_SEND_CONFIRMATION, max_retries=MAX_RETRIES, **DB_RETRY)
def send_confirmation(subscriber_id: int) -> str | None:
    """The double opt-in email (also the "send me a new link" email) to one subscriber."""
    return delivery.send_confirmation(int(subscriber_id), settings=get_settings())


@app.task(name=TASK_POLL_SOURCES, max_retries=MAX_RETRIES)
def poll_sources() -> dict:
    """The registered sources that are due, each polled once (a lease per source, so any
    number of these at once never poll one twice); one failing source stops none of the
    others. Not retried: the beat sends the next one within DIGEST_SOURCE_POLL_SECONDS."""
    outcomes = poll_due_sources(get_settings())
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return {"polled": len(outcomes), **counts,
            "new_items": sum(outcome.new_items for outcome in outcomes)}
