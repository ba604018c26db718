"""How far runs have got: delivery counts by status, read in one grouped query, the ETA of a
running one with what holds it up, and the list of runs an operator reads (empty ones folded).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, literal, select
from sqlalchemy.orm import Session

from digest.delivery.counts import runs_counts
from digest.delivery.forecast import Eta, Waiting, eta_of, measured_throughput
from digest.models import Delivery, DeliveryStatus, DigestRun, DomainPause, RunStatus, utcnow
from digest.settings import Settings


def runs_progress(session: Session, run_ids: list[int]) -> dict[int, dict[str, int]]:
    """Delivery counts by status (and ``total``) for each run, from the counts the database
    keeps (``counts.runs_counts``): the same at any size of the log."""
    counts = runs_counts(session, run_ids)
    return {run_id: c | {"total": sum(c.values())} for run_id, c in counts.items()}


def describe_progress(progress: dict[str, int]) -> str:
    """``"5 total: deferred 1, sent 4"`` for the admin, the CLI and the logs."""
    parts = [f"{k} {v}" for k, v in sorted(progress.items()) if k != "total"]
    return f"{progress.get('total', 0)} total: " + ", ".join(parts) if parts else "no deliveries"


def run_progress(session: Session, run_id: int) -> dict[str, int]:
    return runs_progress(session, [run_id])[run_id]


def runs_eta(session: Session, progress: dict[int, dict[str, int]], *, settings: Settings,
             now: datetime | None = None) -> dict[int, Eta]:
    """The ETA of each run in ``progress`` (``runs_progress``'s counts) and what holds it up
    (``runs_waiting``), for all of them in a few grouped queries (``forecast.eta_of``)."""
    if not progress:
        return {}
    now = now or utcnow()
    run_ids = list(progress)
    # The first end of each run's index on (run_id, sent_at): one probe a run.
    first_sent: dict[int, datetime | None] = {
        run_id: session.scalar(select(Delivery.sent_at).where(
            Delivery.run_id == run_id, Delivery.sent_at.is_not(None))
            .order_by(Delivery.sent_at).limit(1))
        for run_id in run_ids}
    last_moved: dict[int, datetime | None] = {
        run_id: moved for run_id, moved in session.execute(
            select(Delivery.run_id, func.max(Delivery.updated_at))
            .where(Delivery.run_id.in_(run_ids)).group_by(Delivery.run_id))}
    waiting = runs_waiting(session, run_ids, now)
    measured = measured_throughput(session, now)
    return {run_id: eta_of(counts, first_sent.get(run_id), now, waiting=waiting.get(run_id),
                           measured=measured, rate_limit=settings.send_rate,
                           last_moved=_aware(last_moved.get(run_id)),
                           stalled_after=stalled_after(settings))
            for run_id, counts in progress.items()}


def stalled_after(settings: Settings) -> float:
    """How long a run's rows may all sit still, while some could move, before it is called
    stalled: two leases (a dead worker's batch is recovered within one) and never under
    five minutes."""
    return float(max(2 * settings.lease_seconds, 300))


def _aware(moment: datetime | None) -> datetime | None:
    from datetime import UTC

    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def runs_waiting(session: Session, run_ids: list[int], now: datetime) -> dict[int, Waiting]:
    """Per run, its deferred rows not due at ``now`` (a back-off, a rate limit, a paused
    domain), those of paused domains counted per domain: one grouped query."""
    d = Delivery.__table__.c
    # The pause key is the stored address's domain (digest.records.pauses); a domain has
    # no LIKE wildcard but '_', which DNS names do not use.
    paused_here = and_(func.lower(d.email).like(literal("%@") + DomainPause.domain),
                       DomainPause.paused_until > now)
    rows = session.execute(
        select(d.run_id, DomainPause.domain, DomainPause.paused_until, func.count(),
               func.min(d.next_attempt_at))
        .select_from(Delivery.__table__.outerjoin(DomainPause, paused_here))
        .where(d.run_id.in_(run_ids), d.status == DeliveryStatus.deferred,
               d.next_attempt_at > now)
        .group_by(d.run_id, DomainPause.domain, DomainPause.paused_until))
    found: dict[int, tuple[int, datetime, list[tuple[str, int, datetime]]]] = {}
    for run_id, domain, until, n, first in rows:
        total, earliest, paused = found.get(run_id, (0, first, []))
        if domain is not None:
            paused.append((domain, n, until))
        found[run_id] = (total + n, min(earliest, first), paused)
    return {run_id: Waiting(total, earliest, tuple(sorted(paused)), now)
            for run_id, (total, earliest, paused) in found.items()}


# --- the list of runs ---------------------------------------------------------------------------

def empty_run() -> ColumnElement[bool]:
    """A run that came to nothing: finished with no message and no empty digest recorded (an
    hourly slot nobody was due in, which the beat plans every hour). Dry runs are an
    operator's question, never folded."""
    return and_(DigestRun.status == RunStatus.done, DigestRun.dry_run.is_(False),
                DigestRun.planned_count == 0, DigestRun.skipped_count == 0)


@dataclass(frozen=True)
class RunsList:
    runs: list[DigestRun]  # newest first
    empty_hidden: int  # empty runs left out among them (``empty_run``)

    def footer(self, how_to_show: str) -> str | None:
        """``"37 empty runs hidden (...); --all shows them"``, or None."""
        if not self.empty_hidden:
            return None
        return (f"{self.empty_hidden} empty run(s) hidden (finished with nothing to send: "
                f"slots nobody was due in); {how_to_show} shows them")


def list_runs(session: Session, *, limit: int, status: str | None = None,
              include_empty: bool = False) -> RunsList:
    """The newest ``limit`` runs (of ``status``), empty ones left out unless
    ``include_empty``; with how many empty runs fell among those shown (all of them, when
    fewer than ``limit`` are shown)."""
    of_status = [DigestRun.status == status] if status else []
    shown = select(DigestRun).where(*of_status).order_by(DigestRun.id.desc()).limit(limit)
    if include_empty:
        return RunsList(list(session.scalars(shown)), 0)
    runs = list(session.scalars(shown.where(~empty_run())))
    among = [DigestRun.id > runs[-1].id] if len(runs) == limit else []
    hidden = session.scalar(select(func.count()).select_from(DigestRun).where(
        *of_status, empty_run(), *among)) or 0
    return RunsList(runs, hidden)
