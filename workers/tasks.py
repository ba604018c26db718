"""Thin tasks: parse arguments, call a ``digest`` function, enqueue follow-ups, return.

Every task is safe to run twice: planning is unique per slot, sending claims rows first.
Follow-up tasks are enqueued only after the transaction that created their rows committed.
"""

from __future__ import annotations

from datetime import datetime

from digest import deliver, ingest, select, subscribers
from digest.db import session_scope
from digest.settings import get_settings
from workers.celery_app import app

TASK_OPTIONS = {"max_retries": 3}


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def enqueue_deliveries(delivery_ids: list[int]) -> int:
    """One deliver_batch task per batch of ids (each batch shares one SMTP connection)."""
    chunks = deliver.batches(list(delivery_ids), get_settings().batch_size)
    for chunk in chunks:
        deliver_batch.delay(chunk)
    return len(chunks)


@app.task(name="digest.tick", **TASK_OPTIONS)
def tick(now: str | None = None) -> dict:
    """Plan the weekly and daily runs due in this hour and send them."""
    planned = {}
    for frequency in ("weekly", "daily"):
        with session_scope() as session:
            run = select.plan_scheduled_run(session, frequency, now=_when(now))
        enqueue_deliveries(run.pending_ids)
        planned[frequency] = {"run_id": run.run_id, "created": run.created, "pending": run.planned,
                              "skipped": run.skipped}
    return planned


@app.task(name="digest.send_weekly_now", **TASK_OPTIONS)
def send_weekly_now(now: str | None = None, frequency: str = "weekly") -> dict:
    with session_scope() as session:
        run = select.plan_scheduled_run(session, frequency, now=_when(now), everyone=True)
    enqueue_deliveries(run.pending_ids)
    return {"run_id": run.run_id, "created": run.created, "pending": run.planned, "skipped": run.skipped}


@app.task(name="digest.deliver_batch", **TASK_OPTIONS)
def deliver_batch(delivery_ids: list[int]) -> dict:
    result = deliver.send_deliveries([int(i) for i in delivery_ids])
    return {"claimed": result.claimed, "sent": result.sent, "deferred": result.deferred,
            "failed": result.failed, "cancelled": result.cancelled}


@app.task(name="digest.retry_deferred", **TASK_OPTIONS)
def retry_deferred() -> int:
    with session_scope() as session:
        due = deliver.due_for_retry(session)
    return enqueue_deliveries(due)


@app.task(name="digest.recover_leases", **TASK_OPTIONS)
def recover_leases() -> int:
    with session_scope() as session:
        recovered = deliver.recover_expired_leases(session)
    enqueue_deliveries(recovered)
    return len(recovered)


@app.task(name="digest.purge_unconfirmed", **TASK_OPTIONS)
def purge_unconfirmed() -> int:
    with session_scope() as session:
        return subscribers.purge_unconfirmed(session)


@app.task(name="digest.item_published", **TASK_OPTIONS)
def item_published(item_id: int) -> dict:
    """The event for a new item: alerts to subscribers who want every item at once."""
    with session_scope() as session:
        run = select.plan_immediate_run(session, int(item_id))
    enqueue_deliveries(run.pending_ids)
    return {"run_id": run.run_id, "pending": run.planned}


def publish_items(item_ids: list[int]) -> None:
    for item_id in item_ids:
        item_published.delay(item_id)


@app.task(name="digest.ingest_feed", **TASK_OPTIONS)
def ingest_feed(source: str) -> dict:
    report = ingest.ingest_feed(source)
    publish_items(report.new_item_ids)
    return {"new": len(report.new_item_ids), "updated": len(report.updated_item_ids)}


@app.task(name="digest.send_confirmation", **TASK_OPTIONS)
def send_confirmation(subscriber_id: int) -> str | None:
    """The double opt-in email (also the "send me a new link" email) to one subscriber."""
    from digest import notify

    return notify.send_confirmation(int(subscriber_id))
