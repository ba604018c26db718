"""The selection rule, twice: one SQL condition per (item, subscriber) and one set-based join
for a whole run.

``item_matches_subscriber`` (EXISTS subqueries) serves alerts and previews, where one side is
fixed; ``run_pairs`` (joins and a count of facets hit) serves planning, where PostgreSQL
would run the EXISTS form row by row. They are kept equal to each other and to a plain
reading of the rule by a property test over random taxonomies, filters and items
(tests/unit/selection/test_matching_rule.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Subquery,
    Table,
    case,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from digest.models import (
    Delivery,
    DigestRun,
    Item,
    Location,
    Subscriber,
    SubscriberFilter,
    Suppression,
    filter_content_types,
    filter_locations,
    filter_themes,
    item_locations,
    item_themes,
)
from digest.settings import Settings

# --- the window of a scheduled digest ----------------------------------------------------------

@dataclass(frozen=True)
class Window:
    cutoff: datetime
    default_start: datetime  # for subscribers without a watermark (first digest)


def window_for(cutoff: datetime, settings: Settings) -> Window:
    return Window(cutoff, cutoff - timedelta(days=settings.first_digest_lookback_days))




# --- one item, one subscriber: EXISTS ------------------------------------------------------

# Given a filter's column of one facet (a theme, a place, a type id): does the item have it?
_ItemMatch = Callable[[ColumnElement[Any]], ColumnElement[bool]]


def _facet_ok(link_table: Table, link_col: str, item_match: _ItemMatch) -> ColumnElement[bool]:
    """Empty facet (no rows for this filter) or a row that the item satisfies."""
    f = SubscriberFilter.__table__.c
    has_any = exists().where(link_table.c.filter_id == f.id).correlate_except(link_table)
    matched = exists().where(link_table.c.filter_id == f.id, item_match(link_table.c[link_col]))
    # Explicit: the item and the filter live two or three levels up.
    return or_(~has_any, matched.correlate_except(link_table))


# The three facets of a filter, in the order they are shown: (link table, its value column).
FACETS: dict[str, tuple[Table, str]] = {
    "theme": (filter_themes, "theme_id"),
    "location": (filter_locations, "location_id"),
    "content_type": (filter_content_types, "content_type_id"),
}


def item_facet_matchers(item: FromClause) -> dict[str, _ItemMatch]:
    """Per facet: given a filter's value column, does the row of ``item`` have that value?
    A location value takes the item's place itself or the region it belongs to."""
    loc = aliased(Location)

    def theme_match(theme_col: ColumnElement[Any]) -> ColumnElement[bool]:
        return exists().where(item_themes.c.item_id == item.c.id,
                              item_themes.c.theme_id == theme_col).correlate_except(item_themes)

    def location_match(location_col: ColumnElement[Any]) -> ColumnElement[bool]:
        # the item's place itself, or the region it belongs to
        return exists().where(
            item_locations.c.item_id == item.c.id,
            loc.id == item_locations.c.location_id,
            or_(loc.id == location_col, loc.parent_id == location_col),
        ).correlate_except(item_locations, loc)

    def type_match(type_col: ColumnElement[Any]) -> ColumnElement[bool]:
        return item.c.content_type_id == type_col

    return {"theme": theme_match, "location": location_match, "content_type": type_match}


def filter_facet_conditions(item: FromClause) -> dict[str, ColumnElement[bool]]:
    """Per facet, the SQL condition on one ``subscriber_filters`` row (in the enclosing FROM)
    and the row of ``item``: the facet is empty or one of its values is the item's. A filter
    matches when all three hold; ``digest.selection.explain`` shows them one by one."""
    matchers = item_facet_matchers(item)
    return {name: _facet_ok(table, column, matchers[name])
            for name, (table, column) in FACETS.items()}


def item_matches_subscriber(
    item: FromClause, subscriber_id: int | ColumnElement[int]
) -> ColumnElement[bool]:
    """SQL condition: the row of ``item`` (the items table, in the enclosing FROM) matches one
    of the subscriber's filters, or the subscriber has no filter at all.

    The matcher for one item (alerts) or one subscriber (previews); ``run_pairs`` is the one
    for a whole run."""
    f = SubscriberFilter.__table__.c
    any_filter = exists().where(
        f.subscriber_id == subscriber_id, *filter_facet_conditions(item).values(),
    ).correlate_except(SubscriberFilter.__table__)
    # Explicit, like ``any_filter``: the reader's row may live two levels up (the alert
    # planner's "readers with an item in the window they match"), where automatic correlation
    # sees only the items and turned this into "nobody has a filter".
    no_filter = ~exists().where(f.subscriber_id == subscriber_id).correlate_except(
        SubscriberFilter.__table__)
    return or_(no_filter, any_filter)


def not_suppressed(email_col: ColumnElement[str]) -> ColumnElement[bool]:
    return ~exists().where(Suppression.email == email_col)


# --- a whole run: joins ------------------------------------------------------------------------

def run_pairs(session: Session, run: DigestRun | None, item_filter: ColumnElement[bool],
               window: Window | None, *, include_backfill: bool = False,
               chunk: Callable[[ColumnElement[int]], ColumnElement[bool]] | None = None,
               readers: Subquery | None = None) -> Subquery:
    """SELECT (subscriber_id, item_id, delivery_id) for every item each delivery of the run
    should carry; with ``chunk`` (a condition on a subscriber id column) only the deliveries
    of the subscribers it accepts. ``readers``: a subquery of (subscriber_id, delivery_id)
    to pair instead of the run's deliveries (planning pairs the readers before it writes
    their rows, delivery_id then being whatever ``readers`` gives).

    Set-based and linear: every facet becomes a set of (filter, item) hits built with joins;
    a filter matches an item when the number of distinct facets it hits equals the number of
    facets it constrains (an empty facet is not counted, so it matches anything). No OR over
    subqueries, which PostgreSQL would evaluate row by row once the pair sets outgrow
    work_mem. It must accept exactly what ``item_matches_subscriber`` accepts.
    """
    d = Delivery.__table__.c
    s = Subscriber.__table__.c
    i = Item.__table__.c
    f = SubscriberFilter.__table__.c
    loc = Location.__table__.c
    if readers is None:
        assert run is not None
        readers = (select(d.subscriber_id, d.id.label("delivery_id"))
                   .where(d.run_id == run.id,
                          *([chunk(d.subscriber_id)] if chunk is not None else []))
                   .subquery("readers"))
    r = readers.c
    # The chunk's range on the readers' own rows too: a join to ``subscribers`` without it
    # reads the whole table each chunk when PostgreSQL hashes it (a million readers: 400
    # reads of a million rows).
    of_chunk_readers = [chunk(s.id)] if chunk is not None else []
    # The chunk on the filters too: PostgreSQL has no statistics of the deliveries just
    # inserted (it takes them for one row) but has the filters', and plans by them.
    of_chunk = [chunk(f.subscriber_id)] if chunk is not None else []
    filter_bounds: list[Any] = []
    if chunk is not None:
        # Hits of the chunk's filters only, or every chunk would join every reader's. As a
        # range of filter ids (a superset when ids are not in subscriber order; the join to
        # run_filters below is exact), which PostgreSQL estimates well, unlike an IN list.
        filter_bounds = list(session.execute(
            select(func.min(f.id), func.max(f.id)).where(chunk(f.subscriber_id))).one())

    def chunk_filters(column: ColumnElement[int]) -> list[ColumnElement[bool]]:
        if chunk is None:
            return []
        low, high = filter_bounds
        if low is None:
            return [false()]
        return [column.between(low, high)]

    # Archive backfill is never mailed on its own; an operator may pick it for an ad-hoc send.
    item_conds = [item_filter] if include_backfill else [~i.is_backfill, item_filter]
    if window is not None:
        # The earliest window start of anyone in this run bounds the candidate items.
        default_start = literal(window.default_start, Subscriber.watermark.type)
        lowest = session.scalar(
            select(func.min(func.coalesce(s.watermark, default_start)))
            .select_from(readers.join(Subscriber.__table__, s.id == r.subscriber_id))
            .where(*of_chunk_readers))
        item_conds.append(i.ingested_at <= window.cutoff)
        if lowest is not None:
            item_conds.append(i.ingested_at > lowest)
    candidates = select(i.id).where(*item_conds)

    # How many facets each filter constrains, counted once per filter in one grouped pass
    # (as a per-row expression PostgreSQL re-ran it for every candidate pair); of the chunk's
    # filters only, or each chunk would count every reader's.
    constrained = union_all(
        select(filter_themes.c.filter_id, literal(1).label("facet"))
        .where(*chunk_filters(filter_themes.c.filter_id)).distinct(),
        select(filter_locations.c.filter_id, literal(2))
        .where(*chunk_filters(filter_locations.c.filter_id)).distinct(),
        select(filter_content_types.c.filter_id, literal(3))
        .where(*chunk_filters(filter_content_types.c.filter_id)).distinct(),
    ).subquery("constrained")
    required = (
        select(constrained.c.filter_id, func.count().label("required"))
        .group_by(constrained.c.filter_id)
    ).subquery("required")
    run_filters = (
        select(f.id.label("filter_id"), r.subscriber_id, r.delivery_id,
               func.coalesce(required.c.required, 0).label("required"))
        .join(readers, r.subscriber_id == f.subscriber_id)
        .outerjoin(required, required.c.filter_id == f.id)
        .where(*of_chunk)
    ).subquery("run_filters")

    covers = union_all(  # a place is covered by itself and by its region
        select(loc.id.label("place_id"), loc.id.label("covered_by")),
        select(loc.id, loc.parent_id).where(loc.parent_id.is_not(None)),
    ).subquery("covers")
    hits = union_all(
        select(filter_themes.c.filter_id, item_themes.c.item_id, literal(1).label("facet"))
        .join(item_themes, item_themes.c.theme_id == filter_themes.c.theme_id)
        .where(item_themes.c.item_id.in_(candidates), *chunk_filters(filter_themes.c.filter_id)),
        select(filter_locations.c.filter_id, item_locations.c.item_id, literal(2))
        .join(covers, covers.c.covered_by == filter_locations.c.location_id)
        .join(item_locations, item_locations.c.location_id == covers.c.place_id)
        .where(item_locations.c.item_id.in_(candidates),
               *chunk_filters(filter_locations.c.filter_id)),
        select(filter_content_types.c.filter_id, i.id, literal(3))
        .join(Item.__table__, i.content_type_id == filter_content_types.c.content_type_id)
        .where(i.id.in_(candidates), *chunk_filters(filter_content_types.c.filter_id)),
    ).subquery("hits")

    # The facets a (filter, item) hits, each once however many of its rows hit: a sum of one
    # flag per facet, which PostgreSQL aggregates in a hash table (count(DISTINCT facet)
    # made it sort every hit of the chunk).
    theme_hit, place_hit, type_hit = (func.max(case((hits.c.facet == facet, 1), else_=0))
                                      for facet in (1, 2, 3))
    by_facets = (
        select(run_filters.c.subscriber_id, hits.c.item_id, run_filters.c.delivery_id)
        .join(hits, hits.c.filter_id == run_filters.c.filter_id)
        .group_by(run_filters.c.subscriber_id, hits.c.item_id, run_filters.c.delivery_id,
                  run_filters.c.filter_id, run_filters.c.required)
        .having(theme_hit + place_hit + type_hit == run_filters.c.required)
    )
    candidate_items = candidates.subquery("candidate_items")
    blank_filter = (  # a filter with no facet at all takes everything
        select(run_filters.c.subscriber_id, candidate_items.c.id, run_filters.c.delivery_id)
        .join(candidate_items, true()).where(run_filters.c.required == 0)
    )
    no_filter = (  # so does a subscriber without any filter
        select(r.subscriber_id, candidate_items.c.id, r.delivery_id)
        .select_from(readers).join(candidate_items, true())
        .where(~exists().where(f.subscriber_id == r.subscriber_id))
    )
    matched = union(by_facets, blank_filter, no_filter).subquery("matched")
    final = (
        select(matched.c.subscriber_id, matched.c.item_id, matched.c.delivery_id)
        .join(Subscriber.__table__, s.id == matched.c.subscriber_id)
        .join(Item.__table__, i.id == matched.c.item_id)
        .where(*of_chunk_readers)
    )
    if window is not None:
        start = func.coalesce(s.watermark, literal(window.default_start, Subscriber.watermark.type))
        final = final.where(i.ingested_at > start)
    return final.subquery("pairs")
