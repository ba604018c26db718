"""Resend to the failed ones only: a finished run's failed deliveries, once more, as a run
of their own.

The new run (kind ``adhoc``, or ``immediate`` for an alert, so it keeps its template; slot
key ``resend-failed:<run id>``) carries to each reader exactly what their failed delivery
carried (the same item ids): it claims nothing, the failed delivery keeps its
claims (a digest's, an alert's or an ad-hoc send's), so those items never go to
the reader a third time through a digest or an alert. Readers who
unsubscribed or whose address was suppressed since (a hard bounce among them) are left out.
The slot key makes it idempotent: asking twice plans one resend. The failed rows of the
first run stay as they were, the record of what happened then.
"""

from __future__ import annotations

from sqlalchemy import insert, literal, select
from sqlalchemy.orm import Session, aliased

from digest.errors import ValidationError
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    RunKind,
    RunStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from digest.selection.matching import not_suppressed
from digest.selection.planning import PlannedRun, _finish_planning, _get_or_create_run

FINISHED = (RunStatus.done, RunStatus.cancelled)


def resend_key(run_id: int) -> str:
    return f"resend-failed:{run_id}"


def plan_resend_failed(session: Session, run_id: int) -> PlannedRun:
    """Plan the resend of run ``run_id``'s failed deliveries (see the module's docstring);
    the caller commits and enqueues ``pending_ids``. ``created`` is False when that run's
    resend was planned before: nothing new."""
    original = session.get(DigestRun, run_id)
    if original is None:
        raise ValidationError(f"no run with id {run_id}; 'digest runs' lists the recent ones")
    if original.dry_run:
        raise ValidationError(f"run #{run_id} is a dry run: it sent nothing, so nothing failed")
    if original.status not in FINISHED:
        raise ValidationError(
            f"run #{run_id} is {original.status}, not finished: its failed rows may still be "
            f"retried; resend once it is done ('digest runs' shows its progress)")
    kind = RunKind.immediate if original.kind == RunKind.immediate else RunKind.adhoc
    run, created = _get_or_create_run(
        session, kind=kind, slot_key=resend_key(run_id), cutoff=utcnow(),
        params={"resend_failed_of": run_id, "original_kind": str(original.kind)}, dry_run=False)
    if not created:
        return PlannedRun(run.id, False)

    failed = aliased(Delivery)
    s = Subscriber.__table__.c
    # Each new delivery carries what the reader's failed one carried, and claims nothing.
    session.execute(insert(Delivery).from_select(
        ["run_id", "subscriber_id", "email", "status", "attempts", "item_count", "item_ids",
         "newest_item_at", "claims", "created_at", "updated_at"],
        select(literal(run.id), s.id, s.email,
               literal(DeliveryStatus.pending, Delivery.status.type), literal(0),
               failed.item_count, failed.item_ids, failed.newest_item_at, literal(False),
               literal(run.created_at, Delivery.created_at.type),
               literal(run.created_at, Delivery.updated_at.type))
        .join(failed, failed.subscriber_id == s.id)
        .where(failed.run_id == run_id, failed.status == DeliveryStatus.failed,
               s.status == SubscriberStatus.active, not_suppressed(s.email))))
    return _finish_planning(session, run)
