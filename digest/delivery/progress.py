"""How far runs have got: delivery counts by status, read in one grouped query, and the ETA
of a running one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.delivery.forecast import Eta, eta_of
from digest.models import Delivery, utcnow


def runs_progress(session: Session, run_ids: list[int]) -> dict[int, dict[str, int]]:
    """Delivery counts by status (and ``total``) for each run, in one grouped query."""
    counts: dict[int, dict[str, int]] = {run_id: {} for run_id in run_ids}
    for run_id, status, n in session.execute(
            select(Delivery.run_id, Delivery.status, func.count())
            .where(Delivery.run_id.in_(run_ids)).group_by(Delivery.run_id, Delivery.status)):
        counts[run_id][status] = n
    return {run_id: c | {"total": sum(c.values())} for run_id, c in counts.items()}


def describe_progress(progress: dict[str, int]) -> str:
    """``"5 total: deferred 1, sent 4"`` for the admin, the CLI and the logs."""
    parts = [f"{k} {v}" for k, v in sorted(progress.items()) if k != "total"]
    return f"{progress.get('total', 0)} total: " + ", ".join(parts) if parts else "no deliveries"


def run_progress(session: Session, run_id: int) -> dict[str, int]:
    return runs_progress(session, [run_id])[run_id]


def runs_eta(session: Session, progress: dict[int, dict[str, int]],
             now: datetime | None = None) -> dict[int, Eta]:
    """The ETA of each run in ``progress`` (``runs_progress``'s counts), from its own rate so
    far: its first send, read for all of them in one grouped query."""
    now = now or utcnow()
    first_sent: dict[int, datetime | None] = {
        run_id: first for run_id, first in session.execute(
            select(Delivery.run_id, func.min(Delivery.sent_at))
            .where(Delivery.run_id.in_(list(progress)), Delivery.sent_at.is_not(None))
            .group_by(Delivery.run_id))}
    return {run_id: eta_of(counts, first_sent.get(run_id), now)
            for run_id, counts in progress.items()}
