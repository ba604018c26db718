"""Retention: the delivery log (and the claims its rows hold) does not grow without end.

``prune`` deletes, in batches each committed on its own (no giant transaction):

- deliveries in a final state created more than ``DIGEST_RETENTION_DAYS`` ago, of runs that are
  finished (``done`` or ``cancelled``), with what they carry (their item ids, ADR 0030) and
  the bounce reports that name them;
- runs left with no delivery, finished and as old, except the newest run of each kind (catch-up
  and alerts read the latest one).

A delivery's claims (the items it carries when it ``claims``, ``digest.records.contents``)
are what keeps an item from going to a reader twice, so a delivery goes only when every item
it claims is safe to forget: no scheduled run or alert still to come could pick that item
for that reader again. A scheduled run takes the items ingested in
``(window start, cutoff]``, the window start being the reader's watermark, or ``cutoff -
first_digest_lookback_days`` without one (``matching.run_pairs``); the watermark only moves
forward, except when an operator cancels a run (``schedule.give_back_items`` puts it back to
the reader's previous digest). Alerts take items of the last ``catch_up_hours`` at most. So a
row is safe when its item was ingested

- before the retention cutoff, and
- before the reader's watermark (when there is one), and
- before the earliest window start any future run could have: the earliest cutoff of a
  scheduled run still being planned (or now) minus the first digest's look-back, minus the
  catch-up span as a margin,

and the reader has no delivery in an unfinished scheduled run (a cancel could move their
watermark back). A delivery with a row that is not safe yet is kept, and counted.

What a batch deletes is added to ``pruned_tallies`` in the same transaction (deliveries by
run kind and final status, messages sent, bounces by fault): ``/metrics`` adds the tallies to
the live rows, so its counters never go down after a prune (ADR 0018).

Erasure is not retention's business: erasing a subscriber deletes their rows at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from digest.db import rowcount
from digest.delivery.counts import fold
from digest.errors import ConfigError
from digest.models import (
    TALLY_BOUNCES,
    TALLY_DELIVERIES,
    TALLY_SENT,
    Bounce,
    Delivery,
    DeliveryStatus,
    DigestRun,
    PrunedTally,
    RunKind,
    RunStatus,
    Subscriber,
    utcnow,
)
from digest.records.contents import claiming
from digest.records.states import UNFINISHED
from digest.settings import Settings

FINAL = tuple(s for s in DeliveryStatus if s not in UNFINISHED)
FINISHED_RUNS = (RunStatus.done, RunStatus.cancelled)
SCHEDULED_KINDS = (RunKind.weekly, RunKind.daily)


@dataclass
class PruneReport:
    deliveries: int = 0  # delivery log rows deleted (or, in a dry run, that would be)
    ledger_rows: int = 0  # items the deleted deliveries had claimed for their readers
    delivery_items: int = 0  # items they carried without claiming them
    bounces: int = 0  # bounce reports of the deleted deliveries, deleted with them
    runs: int = 0  # runs left empty, deleted
    kept_for_ledger: int = 0  # old final deliveries kept: a claim of theirs is still needed
    batches: int = 0
    dry_run: bool = False
    retention_cutoff: datetime | None = None
    ledger_cutoff: datetime | None = None  # no claim of an item ingested after it goes


def ledger_cutoff(session: Session, now: datetime, settings: Settings) -> datetime:
    """The earliest window start any run still to come could have, minus the catch-up span:
    an item ingested before it is out of reach of every reader without a watermark."""
    planning = session.scalar(select(func.min(DigestRun.cutoff)).where(
        DigestRun.status == RunStatus.planning, DigestRun.dry_run.is_(False)))
    earliest = min(now, planning) if planning is not None else now
    return (earliest - timedelta(days=settings.first_digest_lookback_days)
            - timedelta(hours=settings.catch_up_hours))


def _unsafe_ledger_row(delivery_id: Any, item_before: datetime
                       ) -> ColumnElement[bool]:
    """This delivery claims an item a future run could still need (its reader's). The
    conditions only grow with an item's ``ingested_at``, so the newest item it carries
    (``newest_item_at``) decides for all of them."""
    d = aliased(Delivery)
    s = aliased(Subscriber)
    open_run = aliased(DigestRun)
    open_delivery = aliased(Delivery)
    in_open_scheduled_run = exists().where(
        open_delivery.subscriber_id == d.subscriber_id,
        open_run.id == open_delivery.run_id,
        open_run.kind.in_(SCHEDULED_KINDS), open_run.dry_run.is_(False),
        open_run.status.not_in(FINISHED_RUNS))
    below_watermark = exists().where(
        s.id == d.subscriber_id, s.watermark.is_not(None), d.newest_item_at >= s.watermark)
    return exists().where(
        d.id == delivery_id, claiming(d), d.newest_item_at.is_not(None),
        or_(d.newest_item_at >= item_before, below_watermark, in_open_scheduled_run))


def _items_carried(ids: Any, *, claimed: bool) -> Any:
    """How many items the deliveries ``ids`` carry, claimed by them or not."""
    which = claiming() if claimed else ~claiming()
    return select(func.coalesce(func.sum(Delivery.item_count), 0)).where(
        Delivery.id.in_(ids), which)


def _old_final_deliveries(retention_cutoff: datetime) -> ColumnElement[bool]:
    finished_run = exists().where(DigestRun.id == Delivery.run_id,
                                  DigestRun.status.in_(FINISHED_RUNS))
    return and_(Delivery.status.in_(FINAL), Delivery.created_at < retention_cutoff, finished_run)


def _old_finished_runs(retention_cutoff: datetime) -> ColumnElement[bool]:
    newer = aliased(DigestRun)
    return and_(
        DigestRun.status.in_(FINISHED_RUNS), DigestRun.created_at < retention_cutoff,
        # The newest run of each kind stays: catch-up starts after the last planned slot.
        exists().where(newer.kind == DigestRun.kind, newer.id > DigestRun.id))


def _empty_old_runs(retention_cutoff: datetime) -> ColumnElement[bool]:
    return and_(_old_finished_runs(retention_cutoff),
                ~exists().where(Delivery.run_id == DigestRun.id))


def _delete_and_tally(session: Session, ids: list[int], retention: datetime
                      ) -> tuple[int, int]:
    """Delete these deliveries (those still old and final) and their bounce reports, and add
    them to the tallies, in the caller's transaction; (deliveries, bounces) deleted."""
    # Locked (PostgreSQL), so a re-queue or a second prune cannot change them meanwhile; the
    # tallies are taken from the rows the DELETEs return, so a row is never counted twice.
    ids = list(session.scalars(select(Delivery.id).where(
        Delivery.id.in_(ids), _old_final_deliveries(retention)).with_for_update()))
    if not ids:
        return 0, 0
    kind_of_run = dict(session.execute(select(DigestRun.id, DigestRun.kind).where(
        DigestRun.id.in_(select(Delivery.run_id).where(Delivery.id.in_(ids))))).all())
    tallies: dict[tuple[str, str, str], int] = {}

    def tally(metric: str, kind: str, label: str) -> None:
        tallies[metric, kind, label] = tallies.get((metric, kind, label), 0) + 1

    # The bounces first: deleting a delivery would leave its reports naming none (SET NULL).
    bounce_rows = session.execute(delete(Bounce).where(Bounce.delivery_id.in_(ids)).returning(
        Bounce.delivery_id, Bounce.kind)).all()
    delivery_rows = session.execute(delete(Delivery).where(Delivery.id.in_(ids)).returning(
        Delivery.id, Delivery.run_id, Delivery.status, Delivery.sent_at)).all()
    run_of_delivery = {row.id: row.run_id for row in delivery_rows}
    for row in delivery_rows:
        kind = str(kind_of_run[row.run_id])
        tally(TALLY_DELIVERIES, kind, str(row.status))
        if row.sent_at is not None:
            tally(TALLY_SENT, kind, "")
    for bounce in bounce_rows:
        tally(TALLY_BOUNCES, str(kind_of_run[run_of_delivery[bounce.delivery_id]]),
              str(bounce.kind))
    _add_tallies(session, tallies)
    return len(delivery_rows), len(bounce_rows)


def _add_tallies(session: Session, tallies: dict[tuple[str, str, str], int]) -> None:
    """``count += n`` per (metric, kind, label), the row made on first use (an upsert, so
    two prunes at once do not both insert it)."""
    if not tallies:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    now = utcnow()
    rows = [{"metric": metric, "kind": kind, "label": label, "count": n, "updated_at": now}
            for (metric, kind, label), n in sorted(tallies.items())]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(PrunedTally).values(rows)
        stmt: Any = pg.on_conflict_do_update(
            index_elements=["metric", "kind", "label"],
            set_={"count": PrunedTally.count + pg.excluded["count"], "updated_at": now})
    elif dialect == "sqlite":
        lite = sqlite.insert(PrunedTally).values(rows)
        stmt = lite.on_conflict_do_update(
            index_elements=["metric", "kind", "label"],
            set_={"count": PrunedTally.count + lite.excluded["count"], "updated_at": now})
    else:
        raise ConfigError(f"database {dialect!r} is not supported; use PostgreSQL or SQLite")
    session.execute(stmt)


def prune(session: Session, settings: Settings, *, now: datetime | None = None,
          dry_run: bool = False, batch_size: int = 1000) -> PruneReport:
    """Prune the delivery log as far as its claims allow (module doc); each batch of
    ``batch_size`` deliveries (or runs) is its own transaction. ``dry_run``: count only."""
    now = now or utcnow()
    retention = now - timedelta(days=settings.retention_days)
    item_before = min(retention, ledger_cutoff(session, now, settings))
    report = PruneReport(dry_run=dry_run, retention_cutoff=retention, ledger_cutoff=item_before)
    # Only the rows of old finished runs are read (the index on run_id), not the whole log.
    # (A list, not a subquery: the planner then knows how few runs that is, or that there is
    # none, and reads their rows through the index.)
    old_runs = list(session.scalars(select(DigestRun.id).where(
        DigestRun.status.in_(FINISHED_RUNS), DigestRun.created_at < retention)
        .order_by(DigestRun.id)))
    old = and_(_old_final_deliveries(retention), Delivery.run_id.in_(old_runs))
    prunable = and_(old, ~_unsafe_ledger_row(Delivery.id, item_before))
    report.kept_for_ledger = session.scalar(
        select(func.count()).select_from(Delivery).where(old, ~prunable)) or 0
    if dry_run:
        chosen = select(Delivery.id).where(prunable)
        report.deliveries = session.scalar(select(func.count()).select_from(chosen.subquery())) or 0
        report.ledger_rows = session.scalar(_items_carried(chosen, claimed=True)) or 0
        report.delivery_items = session.scalar(_items_carried(chosen, claimed=False)) or 0
        report.bounces = session.scalar(select(func.count()).select_from(Bounce).where(
            Bounce.delivery_id.in_(chosen))) or 0
        # Runs whose every delivery would go, and those already empty.
        report.runs = session.scalar(select(func.count()).select_from(DigestRun).where(
            _old_finished_runs(retention),
            ~exists().where(Delivery.run_id == DigestRun.id, ~Delivery.id.in_(chosen)))) or 0
        session.rollback()
        return report

    session.commit()
    # Run by run, keyset on (run_id, subscriber_id), the unique index: each batch reads its
    # rows from the index and a batch's kept rows are not read again by the next one; no
    # batch scans the table (a keyset on id alone filtered its way through every younger
    # row, all ten million of them a batch). A delivery is created after its run, so an old
    # delivery's run is an old run.
    for run_id in old_runs:
        _prune_run(session, run_id, prunable, retention, batch_size, report)
    while True:
        run_ids = list(session.scalars(select(DigestRun.id).where(_empty_old_runs(retention))
                                       .order_by(DigestRun.id).limit(batch_size)))
        if not run_ids:
            break
        report.runs += rowcount(session, delete(DigestRun).where(
            DigestRun.id.in_(run_ids), _empty_old_runs(retention)))
        session.commit()
        report.batches += 1
    # The counts' appended rows, folded (also at each scrape): one a run and status.
    fold(session)
    session.commit()
    return report


def _prune_run(session: Session, run_id: int, prunable: ColumnElement[bool],
               retention: datetime, batch_size: int, report: PruneReport) -> None:
    after = 0
    while True:
        rows = session.execute(
            select(Delivery.id, Delivery.subscriber_id)
            .where(Delivery.run_id == run_id, Delivery.subscriber_id > after, prunable)
            .order_by(Delivery.subscriber_id).limit(batch_size)).all()
        if not rows:
            return
        ids = [row.id for row in rows]
        report.ledger_rows += session.scalar(_items_carried(ids, claimed=True)) or 0
        report.delivery_items += session.scalar(_items_carried(ids, claimed=False)) or 0
        deleted, bounces = _delete_and_tally(session, ids, retention)
        report.deliveries += deleted
        report.bounces += bounces
        session.commit()
        report.batches += 1
        after = rows[-1].subscriber_id


__all__ = ["PruneReport", "ledger_cutoff", "prune"]
