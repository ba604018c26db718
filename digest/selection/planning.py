"""Planning a run: its deliveries and what each carries, immediate alerts, ad-hoc sends.

One SQL statement per step for the whole run, never one query per subscriber. A delivery row
carries its item ids (ADR 0030): one row per reader, whatever the number of items, and no
row per (reader, item). Digests, alerts and ad-hoc sends claim what they carry (the items are
then the reader's: no digest or alert repeats them, rules N1 and H3); a dry run, a resend and
an ad-hoc send made with "also include in digests" carry without claiming
(``digest.records.contents`` reads both).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from digest.db import rowcount
from digest.errors import ValidationError
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    Frequency,
    Item,
    Location,
    PlanningChunk,
    RunKind,
    RunStatus,
    Subscriber,
    SubscriberFilter,
    SubscriberStatus,
    filter_content_types,
    filter_locations,
    filter_themes,
    item_locations,
    item_themes,
    utcnow,
)
from digest.records import states as delivery_states
from digest.records.contents import claimed_pairs, claiming, is_claimed
from digest.selection.clock import check_real_send_clock
from digest.selection.matching import (
    Window,
    item_matches_subscriber,
    not_suppressed,
    run_pairs,
)
from digest.settings import Settings

# Which subscribers a chunk is: a condition on a subscriber id column.
Chunk = Callable[[ColumnElement[int]], ColumnElement[bool]]

# Per sort or hash node of the planning statement, for the transaction only.
PLANNING_WORK_MEM = "64MB"


# --- runs ---------------------------------------------------------------------------------------

@dataclass
class PlannedRun:
    run_id: int | None  # None: nothing to plan (an item no immediate subscriber wants)
    created: bool  # False: the slot already had its run; nothing new was planned
    planned: int = 0  # deliveries with at least one item
    skipped: int = 0  # empty digests, recorded and not sent
    # The rows to send (a dry run: it would send), those not handed to ``on_chunk`` already.
    pending_ids: list[int] = field(default_factory=list)
    dry_run: bool = False
    resumed: bool = False  # a run left half-planned was planned to the end by this call


def _get_or_create_run(session: Session, *, kind: RunKind, slot_key: str, cutoff: datetime,
                       params: dict[str, Any], dry_run: bool,
                       status: RunStatus = RunStatus.planned) -> tuple[DigestRun, bool]:
    by_key = select(DigestRun).where(DigestRun.slot_key == slot_key)
    existing = session.scalars(by_key).one_or_none()
    if existing is not None:
        return existing, False
    run = DigestRun(kind=kind, slot_key=slot_key, cutoff=cutoff, params=params, dry_run=dry_run,
                    status=status, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        # another tick or beat created it between our SELECT and INSERT
        return session.scalars(by_key).one(), False
    return run, True


def _finish_planning(session: Session, run: DigestRun) -> PlannedRun:
    delivery_states.mark_planned(session, run.id, dry_run=run.dry_run)
    wanted = DeliveryStatus.dry_run if run.dry_run else DeliveryStatus.pending
    pending_ids = list(session.scalars(
        select(Delivery.id).where(Delivery.run_id == run.id, Delivery.status == wanted)
        .order_by(Delivery.id)
    ))
    skipped = session.scalar(select(func.count()).where(
        Delivery.run_id == run.id, Delivery.status == DeliveryStatus.skipped))
    run.planned_count = len(pending_ids)
    run.skipped_count = skipped or 0
    sending = pending_ids and not run.dry_run
    run.status = RunStatus.sending if sending else RunStatus.done
    if run.status == RunStatus.done:
        run.finished_at = utcnow()
    session.flush()
    return PlannedRun(run.id, True, len(pending_ids), run.skipped_count, pending_ids, run.dry_run)


def _tune_for_planning(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        # JIT spends most of a mid-size planning statement compiling it, and the default
        # 4 MB work_mem sends the sorts and hashes of a 10,000-reader run to disk.
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text(f"SET LOCAL work_mem = '{PLANNING_WORK_MEM}'"))
        # The reader groups and the matched pairs are aggregates PostgreSQL cannot estimate
        # (it takes a HAVING for one row); with nested loops allowed it planned chunks past
        # 60,000 readers of a 100,000-reader run as loops over them: minutes a chunk instead
        # of under a second. Every join of a chunk is a set against a set: hash or merge.
        session.execute(text("SET LOCAL enable_nestloop = off"))


def _lock_claims(session: Session, *, exclusive: bool) -> None:
    """Serialise the planners that read readers' claims against those that add to them.

    Claims live in the delivery rows (ADR 0030): two planners of different runs reading a
    reader's claims at the same time could both give them one item. Scheduled chunks (which
    take items only from each reader's own window, moved in the same transaction) share the
    lock; alerts and ad-hoc sends, whose items are not bounded by the watermark, take it
    alone. PostgreSQL only: SQLite has one writer at a time anyway."""
    if session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        session.execute(select(getattr(func, function)(CLAIMS_LOCK)))


# The window start of every reader of a run without a window (a group key, never compared).
NO_WINDOW = datetime(1970, 1, 1, tzinfo=UTC)

# The advisory lock key of ``_lock_claims`` (any constant the application uses for nothing else).
CLAIMS_LOCK = 7_310_114_016


def _part(session: Session, query: Select[Any], name: str) -> Any:
    """A named part of a planning statement, as a WITH query: PostgreSQL computes a part the
    statement reads twice (the reader groups) once, and SQLite's parser overflows its stack
    on the same statement nested as subqueries."""
    return query.cte(name)


def _concat(session: Session, value: ColumnElement[Any], separator: str,
            order_by: ColumnElement[Any]) -> ColumnElement[str]:
    """The values of a group as one string, in order (SQLite: in the order they come, which
    only costs sharing, never correctness: equal strings are equal lists)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.string_agg(cast(value, String), aggregate_order_by(literal(separator),
                                                                        order_by))
    return type_coerce(func.group_concat(value, separator), String)


def _filter_signatures(session: Session, chunk: Chunk | None) -> Any:
    """(subscriber_id, signature): each reader's filters as one string, equal for two
    readers exactly when their filters select the same items (themes, places and types of
    each filter, sorted). Readers without a filter have no row."""
    f = SubscriberFilter.__table__.c
    of_chunk = [chunk(f.subscriber_id)] if chunk is not None else []
    if chunk is not None:
        # The chunk's facet rows as a range of filter ids (a superset when ids are not in
        # reader order; the join to the chunk's filters below is exact): read from the
        # primary keys, where an IN (the chunk's filters) read each facet table whole, every
        # chunk, so a run of a million readers read them 400 times.
        low, high = session.execute(select(func.min(f.id), func.max(f.id))
                                    .where(*of_chunk)).one()

        def in_range(column: ColumnElement[int]) -> ColumnElement[bool]:
            return column.between(low, high) if low is not None else false()
    else:
        def in_range(column: ColumnElement[int]) -> ColumnElement[bool]:
            return true()

    def facet(table: Table, column: str, name: str) -> Any:
        value = table.c[column]
        return _part(session, select(table.c.filter_id,
                                     _concat(session, value, ",", value).label("ids"))
                     .where(in_range(table.c.filter_id)).group_by(table.c.filter_id), name)

    themes = facet(filter_themes, "theme_id", "sig_themes")
    places = facet(filter_locations, "location_id", "sig_places")
    types = facet(filter_content_types, "content_type_id", "sig_types")
    def listed(part: Any) -> ColumnElement[str]:
        return type_coerce(func.coalesce(part.c.ids, ""), String)

    one = listed(themes) + "/" + listed(places) + "/" + listed(types)
    per_filter = _part(session, select(f.subscriber_id, one.label("sig"))
                       .select_from(SubscriberFilter.__table__
                                    .outerjoin(themes, themes.c.filter_id == f.id)
                                    .outerjoin(places, places.c.filter_id == f.id)
                                    .outerjoin(types, types.c.filter_id == f.id))
                       .where(*of_chunk), "sig_filters")
    return _part(session, select(per_filter.c.subscriber_id,
                                 _concat(session, per_filter.c.sig, "|", per_filter.c.sig)
                                 .label("sig"))
                 .group_by(per_filter.c.subscriber_id), "sig_readers")


def _insert_deliveries(session: Session, run: DigestRun, who: ColumnElement[bool],
                       item_filter: ColumnElement[bool], window: Window | None,
                       chunk: Chunk | None = None, *, claims: bool = True,
                       skip_claimed: bool = True, include_backfill: bool = False) -> None:
    """One row per reader ``who`` accepts (active, not suppressed; of the subscribers
    ``chunk`` accepts, when given), written with what it carries: the ids, their count and the
    newest one's ``ingested_at``. One INSERT ... SELECT, and matching done once per distinct
    content, not once per reader (ADR 0030):

    - readers whose filters are the same (``_filter_signatures``) and whose window starts at
      the same moment select the same items, unless claims of theirs reach into the window
      (an alert, an ad-hoc send after their last digest): such a reader is a group alone;
    - the matching pairs (``matching.run_pairs``) are computed for one reader of each group
      (its representative), grouped into one array per representative, and each reader's row
      copies its representative's array. Nothing is stored one row per (reader, item).

    ``claims``: what the rows carry becomes their readers' (False: a dry run, an ad-hoc send
    "also in digests"). ``skip_claimed``: items already their reader's
    (``contents.claimed_pairs``) are left out, which is rule N1 for digests and alerts. With
    a window only claims that can reach into it are read: those of rows whose newest item is
    newer than the earliest window start of the chunk."""
    _tune_for_planning(session)
    s = Subscriber.__table__.c
    d = Delivery.__table__.c
    chosen_readers = [s.status == SubscriberStatus.active, not_suppressed(s.email), who]
    if chunk is not None:
        chosen_readers.append(chunk(s.id))
    signatures = _filter_signatures(session, chunk)
    # Without a window (an alert, an ad-hoc send) every reader's start is the same constant.
    start: ColumnElement[Any] = (
        func.coalesce(s.watermark, literal(window.default_start, Subscriber.watermark.type))
        if window is not None else literal(NO_WINDOW, Subscriber.watermark.type))
    alone: ColumnElement[Any] = literal(0)
    if skip_claimed:
        # Claims that can reach into the reader's window (all of them without a window).
        reaching = [d.subscriber_id == s.id, d.run_id != run.id, claiming()]
        if window is not None:
            reaching.append(d.newest_item_at > start)
        alone = case((exists().where(*reaching), s.id), else_=0)
    keyed = _part(session, select(s.id.label("subscriber_id"), s.email,
                                  func.coalesce(signatures.c.sig, "*").label("sig"),
                                  start.label("start"), alone.label("alone"))
                  .select_from(Subscriber.__table__.outerjoin(
                      signatures, signatures.c.subscriber_id == s.id))
                  .where(*chosen_readers), "keyed")
    groups = _part(session, select(func.min(keyed.c.subscriber_id).label("rep"), keyed.c.sig,
                                   keyed.c.start, keyed.c.alone)
                   .group_by(keyed.c.sig, keyed.c.start, keyed.c.alone), "reader_groups")
    readers = _part(session, select(groups.c.rep.label("subscriber_id"),
                                    literal(0).label("delivery_id")), "readers")
    pairs = run_pairs(session, run, item_filter, window, chunk=chunk, readers=readers,
                      include_backfill=include_backfill)
    chosen = select(pairs.c.subscriber_id, pairs.c.item_id)
    if skip_claimed:
        of_readers = select(readers.c.subscriber_id)
        newer_than = None
        if window is not None:
            newer_than = session.scalar(
                select(func.min(func.coalesce(
                    Subscriber.watermark,
                    literal(window.default_start, Subscriber.watermark.type))))
                .where(Subscriber.id.in_(of_readers),
                       *([chunk(Subscriber.__table__.c.id)] if chunk is not None else [])))
        if newer_than is not None or window is None:
            claimed = claimed_pairs(
                session,
                newer_than=(literal(newer_than, Delivery.newest_item_at.type)
                            if newer_than is not None else None),
                # The chunk's range as well as its readers: an index range on
                # (subscriber_id, newest_item_at), where the IN alone made PostgreSQL (no
                # nested loops) read every row planned so far, each chunk.
                subscribers=and_(d.subscriber_id.in_(of_readers), d.run_id != run.id,
                                 *([chunk(d.subscriber_id)] if chunk is not None else [])))
            chosen = chosen.where(~exists().where(
                claimed.c.subscriber_id == pairs.c.subscriber_id,
                claimed.c.item_id == pairs.c.item_id))
    chosen_sq = _part(session, chosen, "chosen")
    i = Item.__table__.c
    if session.get_bind().dialect.name == "postgresql":
        ids = func.array_agg(aggregate_order_by(chosen_sq.c.item_id, chosen_sq.c.item_id))
        rows = (select(chosen_sq.c.subscriber_id, ids.label("ids"),
                       func.count().label("carried"), func.max(i.ingested_at).label("newest"))
                .join(Item.__table__, i.id == chosen_sq.c.item_id)
                .group_by(chosen_sq.c.subscriber_id))
    else:
        ordered = _part(session, select(chosen_sq.c.subscriber_id, chosen_sq.c.item_id,
                                        i.ingested_at)
                        .join(Item.__table__, i.id == chosen_sq.c.item_id)
                        .order_by(chosen_sq.c.subscriber_id, chosen_sq.c.item_id), "ordered")
        rows = (select(ordered.c.subscriber_id, func.json_group_array(ordered.c.item_id)
                       .label("ids"), func.count().label("carried"),
                       func.max(ordered.c.ingested_at).label("newest"))
                .group_by(ordered.c.subscriber_id))
    carried = _part(session, rows, "carried")
    nothing = literal([], Delivery.item_ids.type)
    session.execute(
        insert(Delivery).from_select(
            ["run_id", "subscriber_id", "email", "status", "attempts", "item_count", "item_ids",
             "newest_item_at", "claims", "created_at", "updated_at"],
            select(literal(run.id), keyed.c.subscriber_id, keyed.c.email,
                   literal(DeliveryStatus.pending, Delivery.status.type), literal(0),
                   func.coalesce(carried.c.carried, 0),
                   func.coalesce(carried.c.ids, nothing), carried.c.newest, literal(claims),
                   literal(run.created_at, Delivery.created_at.type),
                   literal(run.created_at, Delivery.updated_at.type))
            .select_from(
                keyed.join(groups, and_(groups.c.sig == keyed.c.sig,
                                        groups.c.alone == keyed.c.alone,
                                        groups.c.start == keyed.c.start))
                .outerjoin(carried, carried.c.subscriber_id == groups.c.rep))
            # Ids in reader order, whatever join order the database picks: batches go out
            # in the order readers were added, the same on both databases.
            .order_by(keyed.c.subscriber_id),
        )
    )


# --- scheduled runs, in chunks of subscribers ------------------------------------------------

# Called with a chunk's pending delivery ids once the chunk has committed (to enqueue them).
ChunkSent = Callable[[list[int]], None]

# Called with a run's id once its chunks are laid out and committed (to start other planners).
RunShared = Callable[[int], None]


def _subscriber_ids(column: ColumnElement[int], after: int | None,
                    through: int | None) -> ColumnElement[bool]:
    """``after < column <= through``; a missing bound is no bound."""
    bounds = [column > after] if after is not None else []
    if through is not None:
        bounds.append(column <= through)
    return and_(true(), *bounds)


def _plan_chunk(session: Session, run: DigestRun, who: ColumnElement[bool], window: Window,
                after: int | None, end: int | None) -> tuple[list[int], int]:
    """Deliveries (with what they carry) and watermarks of the subscribers after ``after``
    through ``end`` (ids); (pending ids, skipped). Every statement is bounded by that id range
    (or by the chunk's filters), so a chunk costs the same at the start and at the end of a run."""
    def chunk(column: ColumnElement[int]) -> ColumnElement[bool]:
        return _subscriber_ids(column, after, end)

    _lock_claims(session, exclusive=False)
    # A dry run's rows claim nothing, and the watermarks stay as they are for the real run.
    _insert_deliveries(session, run, who, true(), window, chunk, claims=not run.dry_run)
    of_chunk = chunk(Delivery.__table__.c.subscriber_id)
    delivery_states.mark_planned(session, run.id, dry_run=run.dry_run,
                                 subscribers_after=after, subscribers_through=end)
    wanted = DeliveryStatus.dry_run if run.dry_run else DeliveryStatus.pending
    ids = list(session.scalars(select(Delivery.id).where(
        Delivery.run_id == run.id, of_chunk, Delivery.status == wanted).order_by(Delivery.id)))
    skipped = session.scalar(select(func.count()).where(
        Delivery.run_id == run.id, of_chunk, Delivery.status == DeliveryStatus.skipped)) or 0
    if not run.dry_run:
        # The watermark only moves forward, and only for the people this run covered.
        session.execute(
            update(Subscriber)
            .where(chunk(Subscriber.__table__.c.id),
                   Subscriber.id.in_(select(Delivery.subscriber_id)
                                     .where(Delivery.run_id == run.id, of_chunk)),
                   or_(Subscriber.watermark.is_(None), Subscriber.watermark < run.cutoff))
            .values(watermark=run.cutoff))
    return ids, skipped


def _lay_out_chunks(session: Session, run: DigestRun, size: int) -> None:
    """The run's chunks, once (its row locked: two planners starting together lay out one
    set): ``size`` subscribers each by id, after ``planned_through`` (a run left half-planned
    before chunks were laid out) or from the first; the last has no upper bound, so readers
    who joined since are planned too. A keyset on the primary key, whatever the id gaps."""
    session.execute(select(DigestRun.id).where(DigestRun.id == run.id).with_for_update())
    if session.scalar(select(exists().where(PlanningChunk.run_id == run.id))):
        return
    after = session.scalar(select(DigestRun.planned_through).where(DigestRun.id == run.id))
    numbered = select(Subscriber.id, func.row_number().over(order_by=Subscriber.id).label("n"))
    if after is not None:
        numbered = numbered.where(Subscriber.id > after)
    numbered_sq = numbered.subquery()
    ends = list(session.scalars(select(numbered_sq.c.id).where(numbered_sq.c.n % size == 0)
                                .order_by(numbered_sq.c.id)))
    if ends and ends[-1] == session.scalar(select(func.max(Subscriber.id))):
        ends.pop()  # the last chunk (no upper bound) takes them: no empty chunk after it
    bounds = [after, *ends]
    session.execute(insert(PlanningChunk), [
        {"run_id": run.id, "seq": seq, "after_id": low,
         "through_id": bounds[seq + 1] if seq + 1 < len(bounds) else None}
        for seq, low in enumerate(bounds)])


def _next_chunk(session: Session, run: DigestRun) -> tuple[int, int | None, int | None] | None:
    """The first chunk of the run nobody has planned or is planning (another planner's
    transaction holds its row), locked for this transaction; None: none is left to take."""
    row = session.execute(
        select(PlanningChunk.seq, PlanningChunk.after_id, PlanningChunk.through_id)
        .where(PlanningChunk.run_id == run.id, PlanningChunk.planned_at.is_(None))
        .order_by(PlanningChunk.seq).limit(1).with_for_update(skip_locked=True)).first()
    return None if row is None else (row.seq, row.after_id, row.through_id)


def _finish_if_last(session: Session, run: DigestRun) -> bool:
    """Called with the run's row locked (by the UPDATE of its counts, which waits for every
    other planner's commit): when no chunk is left unplanned, the run moves on (``sending``,
    or ``done`` with nothing to send) and its chunks are deleted; True then."""
    left = session.scalar(select(exists().where(PlanningChunk.run_id == run.id,
                                                PlanningChunk.planned_at.is_(None))))
    if left:
        return False
    planned = session.scalar(select(DigestRun.planned_count).where(DigestRun.id == run.id)) or 0
    values: dict[str, Any] = {}
    if planned and not run.dry_run:
        values["status"] = RunStatus.sending
    else:
        values.update(status=RunStatus.done, finished_at=utcnow())
    session.execute(update(DigestRun).where(DigestRun.id == run.id).values(**values))
    session.execute(delete(PlanningChunk).where(PlanningChunk.run_id == run.id))
    if values["status"] == RunStatus.sending:
        # Workers may have sent every row while the last chunk was being planned.
        delivery_states.finish_run_if_done(session, run.id)
    return True


# How long a planner that found every chunk taken waits before looking again (``wait``).
OTHERS_POLL_SECONDS = 0.2


def plan_in_chunks(session: Session, run: DigestRun, who: ColumnElement[bool],
                   window: Window, *, chunk_size: int, commit: bool = True,
                   on_chunk: ChunkSent | None = None, resumed: bool = False,
                   share: RunShared | None = None,
                   wait: bool = True) -> PlannedRun:
    """Plan a scheduled run (status ``planning``) ``chunk_size`` subscribers at a time, by id:
    its chunks are laid out once (``PlanningChunk``), then planned one transaction each by
    whichever planner takes them first (ADR 0032).

    ``commit``: each chunk is its own transaction (deliveries with what they carry,
    watermarks, the run's counts, the chunk marked planned), and ``on_chunk`` gets its
    pending ids right after it commits, so workers send while the rest is planned. ``share``
    is called with the run's id once its chunks are on record, to start other planners (the
    workers' ``plan_run`` tasks), which call this with ``wait`` False: each takes the next
    chunk nobody holds (``SKIP LOCKED``), so chunks are planned side by side and none twice.
    The planner that plans the last chunk finishes the run. One that dies mid-chunk leaves its
    chunk unplanned and free (its transaction rolled back) for the others or the sweep, and
    the rows of a chunk committed but not enqueued are pending, which the sweep finds.
    ``wait``: with every chunk left taken by others, look again until the run is planned
    (taking over the chunks of a planner that died), so the caller reports the whole run.
    Without ``commit`` (a late run, to be held) it is all one transaction, nothing enqueued,
    and the pending ids are returned instead.
    """
    pending: list[int] = []
    _lay_out_chunks(session, run, chunk_size)
    if commit:
        session.commit()
        if share is not None:
            share(run.id)
    while True:
        status = session.scalar(select(DigestRun.status).where(DigestRun.id == run.id))
        if status != RunStatus.planning:
            break  # planned to the end, by this planner or another
        taken = _next_chunk(session, run)
        if taken is None:
            if commit:
                session.commit()
            if not (wait and commit):
                break
            time.sleep(OTHERS_POLL_SECONDS)
            continue
        seq, after, through = taken
        # Marked first, conditionally: on SQLite (no row locks; this UPDATE starts the write
        # transaction) a planner that took the chunk and committed since is seen here.
        if not rowcount(session, update(PlanningChunk).where(
                PlanningChunk.run_id == run.id, PlanningChunk.seq == seq,
                PlanningChunk.planned_at.is_(None)).values(planned_at=utcnow())):
            if commit:
                session.commit()
            continue
        ids, skipped = _plan_chunk(session, run, who, window, after, through)
        session.execute(update(DigestRun).where(DigestRun.id == run.id).values(
            planned_count=DigestRun.planned_count + len(ids),
            skipped_count=DigestRun.skipped_count + skipped))
        _finish_if_last(session, run)
        if commit:
            session.commit()
        if on_chunk is not None and commit and ids and not run.dry_run:
            on_chunk(ids)
        else:
            pending += ids
    session.refresh(run)
    return PlannedRun(run.id, True, run.planned_count, run.skipped_count, pending, run.dry_run,
                      resumed=resumed)


def plan_immediate_run(session: Session, item_id: int) -> PlannedRun:
    """The alert for one new item to every immediate subscriber it matches (once per item)."""
    item = session.get(Item, item_id)
    if item is None:
        raise ValidationError(f"no item with id {item_id}")
    s = Subscriber.__table__.c
    i = Item.__table__.c
    _lock_claims(session, exclusive=True)
    who = and_(s.frequency == Frequency.immediate, s.status == SubscriberStatus.active,
               wants_unclaimed(session, and_(i.id == item_id, ~i.is_backfill)))
    if not session.scalar(select(exists().where(who))):
        return PlannedRun(None, False)  # nobody wants this one at once: no run at all
    run, created = _get_or_create_run(session, kind=RunKind.immediate,
                                      slot_key=f"immediate:item:{item_id}", cutoff=utcnow(),
                                      params={"item_id": item_id}, dry_run=False)
    if not created:
        return PlannedRun(run.id, False)
    _insert_deliveries(session, run, who, i.id == item_id, None)
    return _drop_if_nothing_to_send(session, run, _finish_planning(session, run))


def _unclaimed_by(session: Session, subscriber_id: ColumnElement[int]) -> ColumnElement[bool]:
    """On an items row: none of the reader's claiming deliveries carries it yet (no digest,
    alert or ad-hoc send carried it to them). Correlated explicitly: the reader's row is
    one level up or two, depending on the query's shape."""
    return ~is_claimed(session, subscriber_id, Item.__table__.c.id)


def wants_unclaimed(session: Session, items: ColumnElement[bool]) -> ColumnElement[bool]:
    """On a subscribers row: an item that ``items`` accepts matches the reader's filters
    (``item_matches_subscriber``) and is not theirs yet. The condition of an alert's readers;
    a reader it leaves out would only get an empty, skipped row."""
    s = Subscriber.__table__.c
    return exists().where(items, item_matches_subscriber(Item.__table__, s.id),
                          _unclaimed_by(session, s.id))


def _drop_if_nothing_to_send(session: Session, run: DigestRun, planned: PlannedRun) -> PlannedRun:
    """An alert run with no message to send is not kept (rule A2): no run row, no skipped
    rows. Planning only creates one when a reader wants an item of its window, so this is for
    a reader who left or was suppressed between those statements (PostgreSQL reads each
    statement at its own moment)."""
    if planned.planned:
        return planned
    session.execute(delete(Delivery).where(Delivery.run_id == run.id))
    session.execute(delete(DigestRun).where(DigestRun.id == run.id))
    session.expunge(run)
    return PlannedRun(None, False)


def plan_due_alerts(session: Session, *, settings: Settings, now: datetime | None = None,
                    wait: bool = True, since: datetime | None = None) -> list[PlannedRun]:
    """Debounced alerts: the items an immediate subscriber wants, one alert per window.

    A window opens with the first wanted item after the last alert run's cutoff and closes
    ``alert_debounce_minutes`` later; once closed, one run carries to each immediate reader
    every item of the window they match (the ledger keeps each item to one alert per reader:
    the alert template for one item, the digest's for several). An open window waits
    (``wait``), or closes now (no scheduler to come back: the in-process queue). Items older
    than ``catch_up_hours`` are not alerted (like missed slots), unless ``since`` (an
    announced item's ``ingested_at``) reaches further back and no alert run is newer. An
    item nobody wants at once, or that every immediate reader it matches has already (the
    ledger: a digest before they moved to immediate, an ad-hoc send), opens no window and
    creates no run (rule A2). ``now`` ahead of the present is refused (rule C1): the window's
    end would pass the items ingested until then."""
    check_real_send_clock(now)
    now = now or utcnow()
    debounce = timedelta(minutes=settings.alert_debounce_minutes)
    s = Subscriber.__table__.c
    i = Item.__table__.c
    immediate = and_(s.frequency == Frequency.immediate, s.status == SubscriberStatus.active,
                     not_suppressed(s.email))
    if not session.scalar(select(exists().where(immediate))):
        return []
    _lock_claims(session, exclusive=True)
    horizon = now - timedelta(hours=settings.catch_up_hours) - debounce
    if since is not None:
        horizon = min(horizon, since - timedelta(microseconds=1))
    # Alert windows only: a resend of failed alerts (kind immediate, key resend-failed:N) has
    # the clock of its resend as cutoff, and would skip the items waiting for their window.
    last = session.scalar(select(func.max(DigestRun.cutoff)).where(
        DigestRun.kind == RunKind.immediate, DigestRun.dry_run.is_(False),
        DigestRun.slot_key.like("immediate:%")))
    after = max(last, horizon) if last is not None else horizon
    runs: list[PlannedRun] = []
    while True:
        # The item's row is the outer one here; the reader's in the condition on them.
        wanted = exists().where(immediate, item_matches_subscriber(Item.__table__, s.id),
                                _unclaimed_by(session, s.id))
        first = session.scalar(select(func.min(i.ingested_at)).where(
            i.ingested_at > after, i.ingested_at <= now, ~i.is_backfill, wanted))
        if first is None:
            return runs
        cutoff = first + debounce
        if cutoff > now:
            if wait:
                return runs  # the window is still open
            cutoff = now
        in_window = and_(i.ingested_at > after, i.ingested_at <= cutoff, ~i.is_backfill)
        who = and_(immediate, wants_unclaimed(session, in_window))
        run, created = _get_or_create_run(
            session, kind=RunKind.immediate, slot_key=f"immediate:{cutoff.isoformat()}",
            cutoff=cutoff, params={"after": after.isoformat(), "through": cutoff.isoformat()},
            dry_run=False)
        if created:
            _insert_deliveries(session, run, who, in_window, None)
            planned = _drop_if_nothing_to_send(session, run, _finish_planning(session, run))
            if planned.run_id is not None:
                runs.append(planned)
        after = cutoff


@dataclass(frozen=True)
class AdhocQuery:
    themes: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    published_from: datetime | None = None
    published_to: datetime | None = None
    item_ids: tuple[int, ...] = ()
    frequencies: tuple[str, ...] = ()  # target segment; empty = every active subscriber
    # Rule H3: an ad-hoc send claims what it carries in the ledger, so the readers' digests and
    # alerts do not carry it again; True (the operator's "also include in digests") claims
    # nothing and leaves their digests as they were.
    also_in_digests: bool = False

    def check(self) -> None:
        """What every ad-hoc send needs (the API and the admin call this): chosen items, a
        date range the right way round, known frequencies. Unknown names fail in planning."""
        if not self.item_ids and self.published_from is None:
            raise ValidationError(
                "choose the items: give item_ids or published_from (and optionally "
                "published_to)")
        if self.published_from and self.published_to and self.published_from > self.published_to:
            raise ValidationError("published_from is after published_to; swap them")
        for frequency in self.frequencies:
            if frequency not in ("immediate", "daily", "weekly"):
                raise ValidationError(
                    f"bad frequency {frequency!r}: choose one of immediate, daily, weekly")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AdhocQuery:
        """The query a run was planned with (``as_params`` read back): a dry run confirmed
        sends exactly what it counted."""
        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(tuple(params.get("themes", ())), tuple(params.get("locations", ())),
                   tuple(params.get("content_types", ())), when(params.get("published_from")),
                   when(params.get("published_to")), tuple(params.get("item_ids", ())),
                   tuple(params.get("frequencies", ())), bool(params.get("also_in_digests")))

    def key(self) -> str:
        params = self.as_params()
        if not self.also_in_digests:
            # The default is hashed as before the option existed: a request repeated across
            # the upgrade still finds its run (H2) instead of sending again.
            del params["also_in_digests"]
        # The same choice in another order is the same request (H2): lists hashed sorted and
        # without repeats (a choice given in order hashes as before).
        for name in ("themes", "locations", "content_types", "item_ids", "frequencies"):
            params[name] = sorted(set(params[name]))
        body = json.dumps(params, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def as_params(self) -> dict[str, Any]:
        return {
            "themes": list(self.themes), "locations": list(self.locations),
            "content_types": list(self.content_types),
            "published_from": self.published_from.isoformat() if self.published_from else None,
            "published_to": self.published_to.isoformat() if self.published_to else None,
            "item_ids": list(self.item_ids), "frequencies": list(self.frequencies),
            "also_in_digests": self.also_in_digests,
        }


def adhoc_item_condition(session: Session, query: AdhocQuery) -> ColumnElement[bool]:
    from digest import taxonomy

    i = Item.__table__.c

    def ids_of(facet: taxonomy.Facet, names: tuple[str, ...]) -> list[int]:
        return [row.id for row in taxonomy.resolve(session, facet, list(names), create=False)]

    conds: list[ColumnElement[bool]] = []
    if query.themes:
        ids = ids_of("theme", query.themes)
        conds.append(exists().where(item_themes.c.item_id == i.id, item_themes.c.theme_id.in_(ids)))
    if query.locations:
        ids = ids_of("location", query.locations)
        loc = aliased(Location)
        conds.append(exists().where(item_locations.c.item_id == i.id,
                                    loc.id == item_locations.c.location_id,
                                    or_(loc.id.in_(ids), loc.parent_id.in_(ids))))
    if query.content_types:
        conds.append(i.content_type_id.in_(ids_of("content_type", query.content_types)))
    if query.published_from:
        conds.append(i.published_at >= query.published_from)
    if query.published_to:
        conds.append(i.published_at <= query.published_to)
    if query.item_ids:
        conds.append(i.id.in_(list(query.item_ids)))
    return and_(true(), *conds)


def plan_adhoc_run(session: Session, query: AdhocQuery, *, dry_run: bool = False,
                   slot_key: str | None = None) -> PlannedRun:
    """An operator's send: the chosen items, to each subscriber they match (archive backfill
    and items the reader already got included: the operator chose them).

    Rule H3: what it carries to a reader is claimed in the ledger, so that reader's digests
    and alerts do not carry it again (``_claim_adhoc_items``); with ``also_in_digests``, or
    for a dry run, nothing is claimed. Unique by its parameters: the same request twice plans
    nothing new unless a new ``slot_key`` is given.
    """
    item_cond = adhoc_item_condition(session, query)
    key = slot_key or f"adhoc:{query.key()}"
    if dry_run:
        key = f"dry-run:{key}:{utcnow().timestamp()}"
    run, created = _get_or_create_run(session, kind=RunKind.adhoc, slot_key=key,
                                      cutoff=utcnow(), params=query.as_params(), dry_run=dry_run)
    if not created:
        if slot_key and AdhocQuery.from_params(run.params).key() != query.key():
            # A key names one send (H2): reusing it for other items or readers would plan
            # nothing and say nothing.
            raise ValidationError(
                f"the key {slot_key.removeprefix('adhoc:')!r} was already used by run "
                f"#{run.id} for a different send; choose a new key to send this one")
        return PlannedRun(run.id, False)
    s = Subscriber.__table__.c
    who = s.frequency.in_(list(query.frequencies)) if query.frequencies else true()
    _lock_claims(session, exclusive=True)
    # Every chosen item the reader matches, those they already had included (the operator
    # chose them): a pair claimed earlier stays that message's as well.
    _insert_deliveries(session, run, who, item_cond, None,
                       claims=not (dry_run or query.also_in_digests), skip_claimed=False,
                       include_backfill=True)
    return _finish_planning(session, run)
