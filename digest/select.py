"""Who gets what: set-based selection of (subscriber, item) pairs and run planning.

Everything here is one SQL statement per step for the whole run, never one query per
subscriber. The rules (docs/architecture.md): within a facet any value matches, across facets
all must match, an empty facet matches anything, several filters are a union, a region
covers its places; a subscriber with no filter at all takes everything. The window of a
scheduled digest is by ``ingested_at``: (watermark, cutoff]; the ``sent_items`` ledger makes
a second send of the same item to the same subscriber impossible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    and_,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    union,
    union_all,
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
    SubscriberFilter,
    SubscriberStatus,
    Suppression,
    delivery_items,
    filter_content_types,
    filter_locations,
    filter_themes,
    item_locations,
    item_themes,
    utcnow,
)
from digest.settings import Settings, get_settings


# Per sort or hash node of the planning statement, for the transaction only.
PLANNING_WORK_MEM = "64MB"


# --- matching ---------------------------------------------------------------------------------

def _facet_ok(link_table, link_col: str, item_match) -> ColumnElement[bool]:
    """Empty facet (no rows for this filter) or a row that the item satisfies."""
    f = SubscriberFilter.__table__.c
    has_any = exists().where(link_table.c.filter_id == f.id).correlate_except(link_table)
    matched = exists().where(link_table.c.filter_id == f.id, item_match(link_table.c[link_col]))
    # Explicit: the item and the filter live two or three levels up.
    return or_(~has_any, matched.correlate_except(link_table))


def item_matches_subscriber(item, subscriber_id) -> ColumnElement[bool]:
    """SQL condition: the row of ``item`` (the items table, in the enclosing FROM) matches one
    of the subscriber's filters, or the subscriber has no filter at all."""
    f = SubscriberFilter.__table__.c
    loc = aliased(Location)

    def theme_match(theme_col):
        return exists().where(item_themes.c.item_id == item.c.id,
                              item_themes.c.theme_id == theme_col).correlate_except(item_themes)

    def location_match(location_col):
        # the item's place itself, or the region it belongs to
        return exists().where(
            item_locations.c.item_id == item.c.id,
            loc.id == item_locations.c.location_id,
            or_(loc.id == location_col, loc.parent_id == location_col),
        ).correlate_except(item_locations, loc)

    def type_match(type_col):
        return item.c.content_type_id == type_col

    any_filter = exists().where(
        f.subscriber_id == subscriber_id,
        _facet_ok(filter_themes, "theme_id", theme_match),
        _facet_ok(filter_locations, "location_id", location_match),
        _facet_ok(filter_content_types, "content_type_id", type_match),
    ).correlate_except(SubscriberFilter.__table__)
    no_filter = ~exists().where(f.subscriber_id == subscriber_id)
    return or_(no_filter, any_filter)


def _not_suppressed(email_col) -> ColumnElement[bool]:
    return ~exists().where(Suppression.email == email_col)


# --- scheduling ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    cutoff: datetime
    default_start: datetime  # for subscribers without a watermark (first digest)


def window_for(cutoff: datetime, settings: Settings | None = None) -> Window:
    s = settings or get_settings()
    return Window(cutoff, cutoff - timedelta(days=s.first_digest_lookback_days))


# When a scheduled digest is due and its planning live in digest.schedule, which builds on this
# module; the old names still work from here.
_MOVED_TO_SCHEDULE = ("due_condition", "plan_scheduled_run", "slot_start")


def __getattr__(name: str):
    if name in _MOVED_TO_SCHEDULE:
        from digest import schedule

        return getattr(schedule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- runs ---------------------------------------------------------------------------------------

@dataclass
class PlannedRun:
    run_id: int | None  # None: nothing to plan (an item no immediate subscriber wants)
    created: bool  # False: the slot already had its run; nothing new was planned
    planned: int = 0  # deliveries with at least one item
    skipped: int = 0  # empty digests, recorded and not sent
    pending_ids: list[int] = field(default_factory=list)  # a dry run: the rows it would send
    dry_run: bool = False


def _get_or_create_run(session: Session, *, kind: str, slot_key: str, cutoff: datetime,
                       params: dict, dry_run: bool) -> tuple[DigestRun, bool]:
    existing = session.scalars(select(DigestRun).where(DigestRun.slot_key == slot_key)).one_or_none()
    if existing is not None:
        return existing, False
    run = DigestRun(kind=kind, slot_key=slot_key, cutoff=cutoff, params=params, dry_run=dry_run,
                    status=RunStatus.planned.value, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        # another tick or beat created it between our SELECT and INSERT
        return session.scalars(select(DigestRun).where(DigestRun.slot_key == slot_key)).one(), False
    return run, True


def _finish_planning(session: Session, run: DigestRun) -> PlannedRun:
    contents = delivery_contents()
    counts = select(func.count()).select_from(contents).where(
        contents.c.delivery_id == Delivery.id).scalar_subquery()
    session.execute(update(Delivery).where(Delivery.run_id == run.id).values(item_count=counts))
    delivery_states.mark_planned(session, run.id, dry_run=run.dry_run)
    wanted = DeliveryStatus.dry_run.value if run.dry_run else DeliveryStatus.pending.value
    pending_ids = list(session.scalars(
        select(Delivery.id).where(Delivery.run_id == run.id, Delivery.status == wanted)
        .order_by(Delivery.id)
    ))
    skipped = session.scalar(select(func.count()).where(
        Delivery.run_id == run.id, Delivery.status == DeliveryStatus.skipped.value))
    run.planned_count = len(pending_ids)
    run.skipped_count = skipped or 0
    run.status = RunStatus.sending.value if pending_ids and not run.dry_run else RunStatus.done.value
    if run.status == RunStatus.done.value:
        run.finished_at = utcnow()
    session.flush()
    return PlannedRun(run.id, True, len(pending_ids), run.skipped_count, pending_ids, run.dry_run)


def _run_pairs(session: Session, run: DigestRun, item_filter: ColumnElement[bool],
               window: Window | None, *, include_backfill: bool = False):
    """SELECT (subscriber_id, item_id, delivery_id) for every item each delivery of the run
    should carry.

    Set-based and linear: every facet becomes a set of (filter, item) hits built with joins;
    a filter matches an item when the number of distinct facets it hits equals the number of
    facets it constrains (an empty facet is not counted, so it matches anything). No OR over
    subqueries, which PostgreSQL would evaluate row by row once the pair sets outgrow
    work_mem.
    """
    d = Delivery.__table__.c
    s = Subscriber.__table__.c
    i = Item.__table__.c
    f = SubscriberFilter.__table__.c
    loc = Location.__table__.c

    # Archive backfill is never mailed on its own; an operator may pick it for an ad-hoc send.
    item_conds = [item_filter] if include_backfill else [~i.is_backfill, item_filter]
    if window is not None:
        # The earliest window start of anyone in this run bounds the candidate items.
        lowest = session.scalar(
            select(func.min(func.coalesce(s.watermark,
                                          literal(window.default_start, Subscriber.watermark.type))))
            .select_from(Delivery.__table__.join(Subscriber.__table__, s.id == d.subscriber_id))
            .where(d.run_id == run.id))
        item_conds.append(i.ingested_at <= window.cutoff)
        if lowest is not None:
            item_conds.append(i.ingested_at > lowest)
    candidates = select(i.id).where(*item_conds)

    # How many facets each filter constrains, counted once per filter in one grouped pass
    # (as a per-row expression PostgreSQL re-ran it for every candidate pair).
    constrained = union_all(
        select(filter_themes.c.filter_id, literal(1).label("facet")).distinct(),
        select(filter_locations.c.filter_id, literal(2)).distinct(),
        select(filter_content_types.c.filter_id, literal(3)).distinct(),
    ).subquery("constrained")
    required = (
        select(constrained.c.filter_id, func.count().label("required"))
        .group_by(constrained.c.filter_id)
    ).subquery("required")
    run_filters = (
        select(f.id.label("filter_id"), d.subscriber_id, d.id.label("delivery_id"),
               func.coalesce(required.c.required, 0).label("required"))
        .join(Delivery.__table__, d.subscriber_id == f.subscriber_id)
        .outerjoin(required, required.c.filter_id == f.id)
        .where(d.run_id == run.id)
    ).subquery("run_filters")

    covers = union_all(  # a place is covered by itself and by its region
        select(loc.id.label("place_id"), loc.id.label("covered_by")),
        select(loc.id, loc.parent_id).where(loc.parent_id.is_not(None)),
    ).subquery("covers")
    hits = union_all(
        select(filter_themes.c.filter_id, item_themes.c.item_id, literal(1).label("facet"))
        .join(item_themes, item_themes.c.theme_id == filter_themes.c.theme_id)
        .where(item_themes.c.item_id.in_(candidates)),
        select(filter_locations.c.filter_id, item_locations.c.item_id, literal(2))
        .join(covers, covers.c.covered_by == filter_locations.c.location_id)
        .join(item_locations, item_locations.c.location_id == covers.c.place_id)
        .where(item_locations.c.item_id.in_(candidates)),
        select(filter_content_types.c.filter_id, i.id, literal(3))
        .join(Item.__table__, i.content_type_id == filter_content_types.c.content_type_id)
        .where(i.id.in_(candidates)),
    ).subquery("hits")

    by_facets = (
        select(run_filters.c.subscriber_id, hits.c.item_id, run_filters.c.delivery_id)
        .join(hits, hits.c.filter_id == run_filters.c.filter_id)
        .group_by(run_filters.c.subscriber_id, hits.c.item_id, run_filters.c.delivery_id,
                  run_filters.c.filter_id, run_filters.c.required)
        .having(func.count(hits.c.facet.distinct()) == run_filters.c.required)
    )
    candidate_items = candidates.subquery("candidate_items")
    blank_filter = (  # a filter with no facet at all takes everything
        select(run_filters.c.subscriber_id, candidate_items.c.id, run_filters.c.delivery_id)
        .join(candidate_items, true()).where(run_filters.c.required == 0)
    )
    no_filter = (  # so does a subscriber without any filter
        select(d.subscriber_id, candidate_items.c.id, d.id)
        .join(candidate_items, true())
        .where(d.run_id == run.id, ~exists().where(f.subscriber_id == d.subscriber_id))
    )
    matched = union(by_facets, blank_filter, no_filter).subquery("matched")
    final = (
        select(matched.c.subscriber_id, matched.c.item_id, matched.c.delivery_id)
        .join(Subscriber.__table__, s.id == matched.c.subscriber_id)
        .join(Item.__table__, i.id == matched.c.item_id)
    )
    if window is not None:
        start = func.coalesce(s.watermark, literal(window.default_start, Subscriber.watermark.type))
        final = final.where(i.ingested_at > start)
    return final.subquery("pairs")


def _tune_for_planning(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        # JIT spends most of a mid-size planning statement compiling it, and the default
        # 4 MB work_mem sends the sorts and hashes of a 10,000-reader run to disk.
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text(f"SET LOCAL work_mem = '{PLANNING_WORK_MEM}'"))


def _insert_ignoring_duplicates(session: Session, table, cols: list[str], rows) -> None:
    if session.get_bind().dialect.name == "postgresql":
        stmt = postgresql.insert(table).from_select(cols, rows).on_conflict_do_nothing()
    else:
        stmt = insert(table).from_select(cols, rows).prefix_with("OR IGNORE")
    session.execute(stmt)


def _insert_ledger(session: Session, run: DigestRun, item_filter: ColumnElement[bool],
                   window: Window | None) -> None:
    """Claim (subscriber, item) pairs for this run's deliveries in the ledger.

    A pair already in the ledger (sent by an earlier run) is skipped by the primary key,
    which is also what makes two overlapping runs safe. The ledger row names its delivery,
    so it is also the record of what that delivery carries (``delivery_contents``).
    """
    _tune_for_planning(session)
    pairs = _run_pairs(session, run, item_filter, window)
    _insert_ignoring_duplicates(
        session, SentItem.__table__, ["subscriber_id", "item_id", "delivery_id", "created_at"],
        select(pairs.c.subscriber_id, pairs.c.item_id, pairs.c.delivery_id,
               literal(utcnow(), SentItem.created_at.type)),
    )


def _insert_unsent_items(session: Session, run: DigestRun, item_filter: ColumnElement[bool],
                         window: Window | None) -> None:
    """The pairs a real run would claim (not in the ledger yet), without claiming them."""
    _tune_for_planning(session)
    pairs = _run_pairs(session, run, item_filter, window)
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
            select(literal(run.id), s.id, s.email, literal(DeliveryStatus.pending.value),
                   literal(0), literal(0), literal(run.created_at, Delivery.created_at.type),
                   literal(run.created_at, Delivery.updated_at.type))
            .where(s.status == SubscriberStatus.active.value, _not_suppressed(s.email), who),
        )
    )


def plan_immediate_run(session: Session, item_id: int) -> PlannedRun:
    """The alert for one new item to every immediate subscriber it matches (once per item)."""
    item = session.get(Item, item_id)
    if item is None:
        raise ValidationError(f"no item with id {item_id}")
    s = Subscriber.__table__.c
    i = Item.__table__
    who = and_(s.frequency == Frequency.immediate.value, s.status == SubscriberStatus.active.value,
               exists().where(i.c.id == item_id, ~i.c.is_backfill, item_matches_subscriber(i, s.id)))
    if not session.scalar(select(exists().where(who))):
        return PlannedRun(None, False)  # nobody wants this one at once: no run at all
    run, created = _get_or_create_run(session, kind=RunKind.immediate.value,
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

    def as_params(self) -> dict:
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
    conds: list[ColumnElement[bool]] = []
    if query.themes:
        ids = [t.id for t in taxonomy.resolve(session, "theme", list(query.themes), create=False)]
        conds.append(exists().where(item_themes.c.item_id == i.id, item_themes.c.theme_id.in_(ids)))
    if query.locations:
        ids = [loc.id for loc in taxonomy.resolve(session, "location", list(query.locations), create=False)]
        loc = aliased(Location)
        conds.append(exists().where(item_locations.c.item_id == i.id, loc.id == item_locations.c.location_id,
                                    or_(loc.id.in_(ids), loc.parent_id.in_(ids))))
    if query.content_types:
        ids = [c.id for c in taxonomy.resolve(session, "content_type", list(query.content_types), create=False)]
        conds.append(i.content_type_id.in_(ids))
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
    run, created = _get_or_create_run(session, kind=RunKind.adhoc.value, slot_key=key,
                                      cutoff=utcnow(), params=query.as_params(), dry_run=dry_run)
    if not created:
        return PlannedRun(run.id, False)
    s = Subscriber.__table__.c
    who = s.frequency.in_(list(query.frequencies)) if query.frequencies else true()
    _insert_deliveries(session, run, who)
    _tune_for_planning(session)
    pairs = _run_pairs(session, run, item_cond, None, include_backfill=True)
    session.execute(insert(delivery_items).from_select(
        ["delivery_id", "item_id"], select(pairs.c.delivery_id, pairs.c.item_id)))
    return _finish_planning(session, run)


# --- preview ------------------------------------------------------------------------------------

def preview_items(session: Session, subscriber: Subscriber, *, as_of: datetime | None = None,
                  since: datetime | None = None, settings: Settings | None = None) -> list[Item]:
    """What the subscriber's next scheduled digest would carry at ``as_of``; writes nothing."""
    as_of = as_of or utcnow()
    window = window_for(as_of, settings)
    start = since or subscriber.watermark or window.default_start
    i = Item.__table__.c
    stmt = (
        select(Item)
        .where(i.ingested_at > start, i.ingested_at <= as_of, ~i.is_backfill,
               item_matches_subscriber(Item.__table__, literal(subscriber.id)),
               ~exists().where(SentItem.subscriber_id == subscriber.id, SentItem.item_id == i.id))
        .order_by(Item.published_at.desc().nullslast(), Item.id)
    )
    return list(session.scalars(stmt))


def matching_items(session: Session, subscriber_id: int, *, since: datetime,
                   until: datetime | None = None) -> list[Item]:
    """Items published in [since, until] that the subscriber's filters match (ledger ignored)."""
    i = Item.__table__.c
    conds = [func.coalesce(i.published_at, i.ingested_at) >= since,
             item_matches_subscriber(Item.__table__, literal(subscriber_id))]
    if until is not None:
        conds.append(func.coalesce(i.published_at, i.ingested_at) <= until)
    return list(session.scalars(select(Item).where(*conds).order_by(Item.published_at.desc().nullslast())))


__all__ = [
    "AdhocQuery", "PlannedRun", "Window", "adhoc_item_condition", "delivery_contents",
    "item_matches_subscriber", "matching_items", "plan_adhoc_run", "plan_immediate_run",
    "preview_items", "window_for",
]
