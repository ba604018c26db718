"""Planning a run: its deliveries, the ``sent_items`` ledger, immediate alerts, ad-hoc sends.

One SQL statement per step for the whole run, never one query per subscriber. The ledger row
names its delivery, so it is also the record of what a scheduled digest carries; ad-hoc sends
and dry runs list their items in ``delivery_items`` instead (``delivery_contents`` reads both).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from digest.delivery import states as delivery_states
from digest.delivery.contents import delivery_contents
from digest.errors import ValidationError
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    Frequency,
    Item,
    Location,
    RunKind,
    RunStatus,
    SentItem,
    Subscriber,
    SubscriberStatus,
    delivery_items,
    item_locations,
    item_themes,
    utcnow,
)
from digest.selection.matching import (
    Window,
    item_matches_subscriber,
    not_suppressed,
    run_pairs,
)

# Per sort or hash node of the planning statement, for the transaction only.
PLANNING_WORK_MEM = "64MB"


# --- runs ---------------------------------------------------------------------------------------

@dataclass
class PlannedRun:
    run_id: int | None  # None: nothing to plan (an item no immediate subscriber wants)
    created: bool  # False: the slot already had its run; nothing new was planned
    planned: int = 0  # deliveries with at least one item
    skipped: int = 0  # empty digests, recorded and not sent
    pending_ids: list[int] = field(default_factory=list)  # a dry run: the rows it would send
    dry_run: bool = False


def _get_or_create_run(session: Session, *, kind: RunKind, slot_key: str, cutoff: datetime,
                       params: dict[str, Any], dry_run: bool) -> tuple[DigestRun, bool]:
    by_key = select(DigestRun).where(DigestRun.slot_key == slot_key)
    existing = session.scalars(by_key).one_or_none()
    if existing is not None:
        return existing, False
    run = DigestRun(kind=kind, slot_key=slot_key, cutoff=cutoff, params=params, dry_run=dry_run,
                    status=RunStatus.planned, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        # another tick or beat created it between our SELECT and INSERT
        return session.scalars(by_key).one(), False
    return run, True


def _finish_planning(session: Session, run: DigestRun) -> PlannedRun:
    contents = delivery_contents()
    counts = select(func.count()).select_from(contents).where(
        contents.c.delivery_id == Delivery.id).scalar_subquery()
    session.execute(update(Delivery).where(Delivery.run_id == run.id).values(item_count=counts))
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


def _insert_ignoring_duplicates(session: Session, table: Table, cols: list[str],
                                rows: Select[Any]) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(table).from_select(cols, rows).on_conflict_do_nothing())
    else:
        session.execute(insert(table).from_select(cols, rows).prefix_with("OR IGNORE"))


def _insert_ledger(session: Session, run: DigestRun, item_filter: ColumnElement[bool],
                   window: Window | None) -> None:
    """Claim (subscriber, item) pairs for this run's deliveries in the ledger.

    A pair already in the ledger (sent by an earlier run) is skipped by the primary key,
    which is also what makes two overlapping runs safe. The ledger row names its delivery,
    so it is also the record of what that delivery carries (``delivery_contents``).
    """
    _tune_for_planning(session)
    pairs = run_pairs(session, run, item_filter, window)
    _insert_ignoring_duplicates(
        session, cast(Table, SentItem.__table__),
        ["subscriber_id", "item_id", "delivery_id", "created_at"],
        select(pairs.c.subscriber_id, pairs.c.item_id, pairs.c.delivery_id,
               literal(utcnow(), SentItem.created_at.type)),
    )


def _insert_unsent_items(session: Session, run: DigestRun, item_filter: ColumnElement[bool],
                         window: Window | None) -> None:
    """The pairs a real run would claim (not in the ledger yet), without claiming them."""
    _tune_for_planning(session)
    pairs = run_pairs(session, run, item_filter, window)
    session.execute(insert(delivery_items).from_select(
        ["delivery_id", "item_id"],
        select(pairs.c.delivery_id, pairs.c.item_id).where(~exists().where(
            SentItem.subscriber_id == pairs.c.subscriber_id, SentItem.item_id == pairs.c.item_id))))


def _insert_deliveries(session: Session, run: DigestRun, who: ColumnElement[bool]) -> None:
    s = Subscriber.__table__.c
    session.execute(
        insert(Delivery).from_select(
            ["run_id", "subscriber_id", "email", "status", "attempts", "item_count",
             "created_at", "updated_at"],
            select(literal(run.id), s.id, s.email,
                   literal(DeliveryStatus.pending, Delivery.status.type), literal(0), literal(0),
                   literal(run.created_at, Delivery.created_at.type),
                   literal(run.created_at, Delivery.updated_at.type))
            .where(s.status == SubscriberStatus.active, not_suppressed(s.email), who),
        )
    )


def plan_immediate_run(session: Session, item_id: int) -> PlannedRun:
    """The alert for one new item to every immediate subscriber it matches (once per item)."""
    item = session.get(Item, item_id)
    if item is None:
        raise ValidationError(f"no item with id {item_id}")
    s = Subscriber.__table__.c
    i = Item.__table__
    wanted = exists().where(i.c.id == item_id, ~i.c.is_backfill, item_matches_subscriber(i, s.id))
    who = and_(s.frequency == Frequency.immediate,
               s.status == SubscriberStatus.active, wanted)
    if not session.scalar(select(exists().where(who))):
        return PlannedRun(None, False)  # nobody wants this one at once: no run at all
    run, created = _get_or_create_run(session, kind=RunKind.immediate,
                                      slot_key=f"immediate:item:{item_id}", cutoff=utcnow(),
                                      params={"item_id": item_id}, dry_run=False)
    if not created:
        return PlannedRun(run.id, False)
    _insert_deliveries(session, run, who)
    _insert_ledger(session, run, Item.__table__.c.id == item_id, None)
    return _finish_planning(session, run)


@dataclass(frozen=True)
class AdhocQuery:
    themes: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    published_from: datetime | None = None
    published_to: datetime | None = None
    item_ids: tuple[int, ...] = ()
    frequencies: tuple[str, ...] = ()  # target segment; empty = every active subscriber

    def key(self) -> str:
        body = json.dumps(self.as_params(), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def as_params(self) -> dict[str, Any]:
        return {
            "themes": list(self.themes), "locations": list(self.locations),
            "content_types": list(self.content_types),
            "published_from": self.published_from.isoformat() if self.published_from else None,
            "published_to": self.published_to.isoformat() if self.published_to else None,
            "item_ids": list(self.item_ids), "frequencies": list(self.frequencies),
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
    """An operator's send: the chosen items, to each subscriber they match.

    Ad-hoc sends do not write the ledger (an operator may resend on purpose) but are
    unique by their parameters: the same request twice plans nothing new unless a new
    ``slot_key`` is given.
    """
    item_cond = adhoc_item_condition(session, query)
    key = slot_key or f"adhoc:{query.key()}"
    if dry_run:
        key = f"dry-run:{key}:{utcnow().timestamp()}"
    run, created = _get_or_create_run(session, kind=RunKind.adhoc, slot_key=key,
                                      cutoff=utcnow(), params=query.as_params(), dry_run=dry_run)
    if not created:
        return PlannedRun(run.id, False)
    s = Subscriber.__table__.c
    who = s.frequency.in_(list(query.frequencies)) if query.frequencies else true()
    _insert_deliveries(session, run, who)
    _tune_for_planning(session)
    pairs = run_pairs(session, run, item_cond, None, include_backfill=True)
    session.execute(insert(delivery_items).from_select(
        ["delivery_id", "item_id"], select(pairs.c.delivery_id, pairs.c.item_id)))
    return _finish_planning(session, run)
