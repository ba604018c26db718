"""The operator shapes the taxonomy: rename, merge and move terms between facets, and the
review list of feed categories nothing could file (ADR 0036).

Every change is a handful of set-based statements: the items' tags (``item_themes``,
``item_locations``, ``items.content_type_id``) and the subscribers' filters
(``filter_themes``, ``filter_locations``, ``filter_content_types``) follow the term, with no
duplicate rows in the association tables. The caller commits.

What a subscriber's filter means afterwards:

- rename: nothing changes but the name.
- merge: the terms are declared one; a filter that had any of them now has the one, so a
  filter that had all of them matches exactly the items it matched before, and a filter that
  had only some now also takes the items of the others (that is what a merge says).
- move: a filter that chose the term in the old facet chooses it in the new one. Where it
  chose other values in the old facet too, the filter is split in two (the others kept, and a
  copy choosing the term in the new facet), so it takes the same items. Where it already
  chose values in the new facet, the term joins them (values OR within a facet), which can
  only widen it; those filters are named in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from digest.db import insert_ignoring_conflict
from digest.errors import NotFoundError, ValidationError
from digest.models import (
    ContentType,
    Item,
    Location,
    Source,
    SubscriberFilter,
    TermReview,
    Theme,
    filter_content_types,
    filter_locations,
    filter_themes,
    item_locations,
    item_themes,
    term_review_items,
    utcnow,
)
from digest.taxonomy import (
    FACETS,
    Facet,
    TaxonomyModel,
    _model,
    clean_name,
    resolve,
    slugify,
)

# facet -> (its items table, its filters table, the term's column in both)
_TAGS: dict[str, tuple[Table | None, Table, str]] = {
    "theme": (item_themes, filter_themes, "theme_id"),
    "location": (item_locations, filter_locations, "location_id"),
    "content_type": (None, filter_content_types, "content_type_id"),  # items: one column
}


def facet_of(text: str) -> Facet:
    """A facet from what a person types ("theme", "location", "content-type", "type")."""
    key = text.strip().lower().replace("-", "_").replace(" ", "_")
    key = {"themes": "theme", "locations": "location", "type": "content_type",
           "content_types": "content_type", "types": "content_type"}.get(key, key)
    for facet in FACETS:
        if key == facet:
            return facet
    raise ValidationError(f"unknown facet {text!r}; use theme, location or content-type")


def _one(session: Session, facet: Facet, name: str) -> TaxonomyModel:
    """The term of that name (UnknownTaxonomyError lists the valid ones)."""
    if not clean_name(name):
        raise ValidationError(f"give the {facet.replace('_', ' ')}'s name")
    return cast(TaxonomyModel, resolve(session, facet, [name], create=False)[0])


# --- rename ----------------------------------------------------------------------------------

def rename(session: Session, facet: Facet, name: str, new_name: str) -> TaxonomyModel:
    """Give a term a new name (and slug); items and filters keep pointing at it. A new name
    that is another term's is refused: that is a merge."""
    term = _one(session, facet, name)
    new_name = clean_name(new_name)
    new_slug = slugify(new_name)
    if not new_slug:
        raise ValidationError(f"the new name {new_name!r} has no letters or digits; give one "
                              "with at least one")
    model = _model(facet)
    other = cast(TaxonomyModel | None, session.scalar(
        select(model).where(model.slug == new_slug, model.id != term.id)))
    if other is not None:
        raise ValidationError(
            f"a {facet.replace('_', ' ')} named {other.name!r} exists already; to make "
            f"{term.name!r} and {other.name!r} one, merge them: digest taxonomy merge "
            f"{facet.replace('_', '-')} {term.name!r} --into {other.name!r}")
    _follow_source_defaults(session, facet, {term.slug}, new_name)
    term.slug, term.name = new_slug, new_name
    session.flush()
    return term


_DEFAULTS = {"location": "default_location", "content_type": "default_content_type"}


def _follow_source_defaults(session: Session, facet: Facet, old_slugs: set[str],
                            new_name: str | None,
                            moved_to: tuple[Facet, str] | None = None) -> None:
    """A registered source's default location or content type is kept as a name: it follows
    a renamed or merged term (``new_name``); a term moved to another facet leaves it and
    becomes that facet's default where the source has none (``moved_to``). So the next poll
    does not bring the old name back."""
    column = _DEFAULTS.get(facet)
    if column is None:
        return
    for source in session.scalars(select(Source).where(getattr(Source, column).is_not(None))):
        if slugify(getattr(source, column)) not in old_slugs:
            continue
        setattr(source, column, new_name)
        other = _DEFAULTS.get(moved_to[0]) if moved_to else None
        if moved_to and other and not getattr(source, other):
            setattr(source, other, moved_to[1])


# --- merge -----------------------------------------------------------------------------------

def _copy_links(session: Session, table: Table, owner: str, column: str,
                old_ids: list[int], new_id: int) -> None:
    """Give every owner (item, filter) of one of ``old_ids`` the term ``new_id``, once."""
    t = table.c
    mine = table.alias("already")
    owners = (select(t[owner]).where(t[column].in_(old_ids))
              .where(~exists().where(mine.c[owner] == t[owner], mine.c[column] == new_id))
              .distinct())
    session.execute(insert(table).from_select([owner, column],
                                              select(owners.subquery().c[owner],
                                                     literal(new_id))))


def _drop_links(session: Session, table: Table, column: str, ids: list[int]) -> None:
    session.execute(delete(table).where(table.c[column].in_(ids)))


def merge(session: Session, facet: Facet, names: list[str], into: str) -> TaxonomyModel:
    """Make ``names`` one term, ``into`` (which must exist): their items and filters get it
    (once), locations under them get it as their region, then they are removed."""
    target = _one(session, facet, into)
    sources = [t for t in resolve(session, facet, names, create=False) if t.id != target.id]
    if not sources:
        raise ValidationError(f"nothing to merge: give names other than {target.name!r}")
    ids = [t.id for t in sources]
    items_table, filters_table, column = _TAGS[facet]
    if items_table is not None:
        _copy_links(session, items_table, "item_id", column, ids, target.id)
        _drop_links(session, items_table, column, ids)
    else:  # one content type per item: the column simply points at the survivor
        session.execute(update(Item).where(Item.content_type_id.in_(ids))
                        .values(content_type_id=target.id))
    _copy_links(session, filters_table, "filter_id", column, ids, target.id)
    _drop_links(session, filters_table, column, ids)
    if facet == "location":
        _merge_regions(session, cast(Location, target), cast(list[Location], sources))
    _follow_source_defaults(session, facet, {t.slug for t in sources}, target.name)
    for term in sources:
        session.delete(term)
    session.flush()
    return target


def _merge_regions(session: Session, target: Location, sources: list[Location]) -> None:
    ids = [s.id for s in sources]
    # Places under a merged region are now under the survivor (never under themselves).
    session.execute(update(Location).where(Location.parent_id.in_(ids), Location.id != target.id)
                    .values(parent_id=target.id))
    if target.parent_id in ids:
        target.parent_id = None
    if target.parent_id is None:  # a loose survivor takes a merged term's region
        target.parent_id = next((s.parent_id for s in sources
                                 if s.parent_id not in (None, target.id, *ids)), None)


# --- move ------------------------------------------------------------------------------------

@dataclass
class MoveReport:
    term: TaxonomyModel  # the term in its new facet
    items: int = 0  # items that carry it there
    kept_own_type: list[int] = field(default_factory=list)  # items whose type was kept
    split_filters: list[int] = field(default_factory=list)  # filters split in two (same items)
    widened_filters: list[int] = field(default_factory=list)  # filters that now take more

    def summary(self, from_facet: str) -> str:
        to = "content type" if isinstance(self.term, ContentType) else (
            "theme" if isinstance(self.term, Theme) else "location")
        line = (f"{self.term.name!r} moved from {from_facet.replace('_', ' ')} to {to}: "
                f"{self.items} item(s) follow")
        if self.kept_own_type:
            line += (f"; {len(self.kept_own_type)} item(s) kept their own content type "
                     f"(ids {', '.join(map(str, self.kept_own_type[:10]))})")
        if self.split_filters:
            line += f"; {len(self.split_filters)} filter(s) split in two, same items"
        if self.widened_filters:
            line += (f"; {len(self.widened_filters)} filter(s) already chose a {to}: the term "
                     f"joined them, so they take more items (filter ids "
                     f"{', '.join(map(str, self.widened_filters[:10]))})")
        return line


def move(session: Session, name: str, from_facet: Facet, to_facet: Facet, *,
         keep_existing_type: bool = False) -> MoveReport:
    """Move a term to another facet (where a term of that name is found or made): its items
    and filters follow, then the old term is removed.

    An item has one content type: moving a term to content types, an item that has another
    type already is refused by default (ValidationError naming the items); with
    ``keep_existing_type`` such items keep their own type and lose this term.
    """
    if from_facet == to_facet:
        raise ValidationError(f"{name!r} is a {from_facet.replace('_', ' ')} already; to "
                              "change its name use rename")
    old = _one(session, from_facet, name)
    old_items, old_filters, old_col = _TAGS[from_facet]
    tagged = _tagged(from_facet, old.id)  # a subquery: the items carrying the old term
    conflicts: list[int] = []
    if to_facet == "content_type":
        same = session.scalar(select(ContentType.id).where(ContentType.slug == old.slug))
        conflicts = list(session.scalars(
            select(Item.id).where(Item.id.in_(tagged), Item.content_type_id.is_not(None),
                                  Item.content_type_id != (same or -1))
            .order_by(Item.id)))
        if conflicts and not keep_existing_type:
            raise ValidationError(
                f"{len(conflicts)} item(s) tagged {old.name!r} have a content type already "
                f"(ids {', '.join(map(str, conflicts[:10]))}) and an item has one; pass "
                "--keep-existing-type (keep_existing_type) to keep theirs (they then lose "
                f"{old.name!r}), or change them first")
    new = cast(TaxonomyModel, resolve(session, to_facet, [old.name], create=True)[0])
    session.flush()
    report = MoveReport(term=new, kept_own_type=conflicts)
    report.items = (session.scalar(select(func.count()).select_from(tagged.subquery())) or 0) \
        - len(conflicts)

    new_items, new_filters, new_col = _TAGS[to_facet]
    if new_items is not None:
        t = new_items.c
        session.execute(insert(new_items).from_select(
            ["item_id", new_col],
            select(Item.id, literal(new.id)).where(
                Item.id.in_(tagged),
                ~exists().where(t.item_id == Item.id, t[new_col] == new.id))))
    else:  # items with a type of their own (the conflicts) keep it
        session.execute(update(Item).where(Item.id.in_(tagged),
                                           Item.content_type_id.is_(None))
                        .values(content_type_id=new.id))
    if old_items is not None:
        _drop_links(session, old_items, old_col, [old.id])
    else:
        session.execute(update(Item).where(Item.content_type_id == old.id)
                        .values(content_type_id=None))

    _move_filters(session, report, old.id, new.id, old_filters, old_col, new_filters, new_col)
    _follow_source_defaults(session, from_facet, {old.slug}, None, moved_to=(to_facet, new.name))
    session.delete(old)
    session.flush()
    return report


def _tagged(facet: Facet, term_id: int) -> Select[Any]:
    """SELECT of the ids of the items carrying a term."""
    items_table, _, column = _TAGS[facet]
    if items_table is None:
        return select(Item.id).where(Item.content_type_id == term_id)
    return select(items_table.c.item_id).where(items_table.c[column] == term_id)


def _move_filters(session: Session, report: MoveReport, old_id: int, new_id: int,
                  old_table: Table, old_col: str, new_table: Table, new_col: str) -> None:
    """The filters that chose the old term choose the new one (see the module's text):
    set-based, but for the filters split in two, which need a new filter row each."""
    o, n = old_table.c, new_table.c
    mine = old_table.alias("same_filter")
    chose = select(o.filter_id).where(o[old_col] == old_id)
    has_others = exists().where(mine.c.filter_id == o.filter_id, mine.c[old_col] != old_id)
    chose_new_facet = exists().where(n.filter_id == o.filter_id)
    report.widened_filters = list(session.scalars(chose.where(chose_new_facet)
                                                  .order_by(o.filter_id)))
    report.split_filters = list(session.scalars(chose.where(has_others, ~chose_new_facet)
                                                .order_by(o.filter_id)))
    # The others: the term simply changes facet (once: the filter may have it there already).
    session.execute(insert(new_table).from_select(
        ["filter_id", new_col],
        select(o.filter_id, literal(new_id)).where(
            o[old_col] == old_id, o.filter_id.not_in(report.split_filters or [-1]),
            ~exists().where(n.filter_id == o.filter_id, n[new_col] == new_id))))
    for filter_id in report.split_filters:
        # (term OR others) AND rest == (others AND rest) OR (term-in-new-facet AND rest)
        copy_id = _copy_filter(session, filter_id, leave_out=old_table)
        session.execute(insert(new_table).values(filter_id=copy_id, **{new_col: new_id}))
    _drop_links(session, old_table, old_col, [old_id])


def _copy_filter(session: Session, filter_id: int, leave_out: Table) -> int:
    """A new filter of the same subscriber with the same values but none in ``leave_out``."""
    original = session.get_one(SubscriberFilter, filter_id)
    copy = SubscriberFilter(subscriber_id=original.subscriber_id)
    session.add(copy)
    session.flush()
    for table, column in ((filter_themes, "theme_id"), (filter_locations, "location_id"),
                          (filter_content_types, "content_type_id")):
        if table is leave_out:
            continue
        session.execute(insert(table).from_select(
            ["filter_id", column],
            select(literal(copy.id), table.c[column]).where(table.c.filter_id == filter_id)))
    session.expire(original)
    return copy.id


# --- the review list -------------------------------------------------------------------------

@dataclass
class Unfiled:
    """A category a feed gave without a telling domain and that no facet knows."""
    name: str
    reason: str
    item_ids: list[int]


def record_unfiled(session: Session, unfiled: list[Unfiled], *, source: str,
                   now: datetime | None = None) -> None:
    """Keep each unfiled category on the review list (one row per slug: seen once more, when
    and where last) and link the items that carried it."""
    now = now or utcnow()
    for entry in unfiled:
        slug = slugify(entry.name)
        if not slug:
            continue
        session.execute(insert_ignoring_conflict(
            session, TermReview, {"slug": slug, "name": clean_name(entry.name),
                                  "reason": entry.reason, "seen_count": 0,
                                  "first_seen_at": now, "last_seen_at": now,
                                  "source": source[:200]}, ["slug"]))
        review_id = session.scalars(
            update(TermReview).where(TermReview.slug == slug)
            .values(seen_count=TermReview.seen_count + 1, last_seen_at=now,
                    source=source[:200], reason=entry.reason)
            .returning(TermReview.id)).one()
        for item_id in sorted(set(entry.item_ids)):
            session.execute(insert_ignoring_conflict(
                session, term_review_items, {"review_id": review_id, "item_id": item_id},
                ["review_id", "item_id"]))


@dataclass
class Review:
    name: str
    slug: str
    reason: str
    seen_count: int
    first_seen_at: datetime
    last_seen_at: datetime
    source: str
    items: int


def review_list(session: Session) -> list[Review]:
    """The categories waiting to be filed, the most seen first."""
    count = (select(func.count()).select_from(term_review_items)
             .where(term_review_items.c.review_id == TermReview.id).scalar_subquery())
    rows = session.execute(select(TermReview, count)
                           .order_by(TermReview.seen_count.desc(), TermReview.slug))
    return [Review(r.name, r.slug, r.reason, r.seen_count, r.first_seen_at, r.last_seen_at,
                   r.source, n) for r, n in rows]


def _review(session: Session, name: str) -> TermReview:
    found = session.scalar(select(TermReview).where(TermReview.slug == slugify(name)))
    if found is None:
        waiting = [r.name for r in review_list(session)]
        raise NotFoundError(f"{name!r} is not on the review list; waiting: "
                            f"{', '.join(waiting[:12]) or '(none)'} (digest taxonomy review)")
    return found


@dataclass
class Filed:
    term: TaxonomyModel
    items: int  # items tagged with it now
    kept_own_type: list[int] = field(default_factory=list)


def file_review(session: Session, name: str, facet: Facet) -> Filed:
    """File a reviewed category in ``facet`` (the term found or made there): the items that
    carried it get it, and it leaves the review list. Later feeds file it by themselves (it is
    now a known name). An item that has a content type already keeps it."""
    review = _review(session, name)
    term = cast(TaxonomyModel, resolve(session, facet, [review.name], create=True)[0])
    session.flush()
    item_ids = select(term_review_items.c.item_id).where(
        term_review_items.c.review_id == review.id)
    items_table, _, column = _TAGS[facet]
    kept: list[int] = []
    if items_table is not None:
        t = items_table.c
        session.execute(insert(items_table).from_select(
            ["item_id", column],
            select(Item.id, literal(term.id)).where(
                Item.id.in_(item_ids),
                ~exists().where(t.item_id == Item.id, t[column] == term.id))))
        tagged = session.scalar(select(func.count()).select_from(items_table).where(
            t[column] == term.id, t.item_id.in_(item_ids))) or 0
    else:
        kept = list(session.scalars(select(Item.id).where(
            Item.id.in_(item_ids), Item.content_type_id.is_not(None),
            Item.content_type_id != term.id)))
        session.execute(update(Item).where(Item.id.in_(item_ids), Item.content_type_id.is_(None))
                        .values(content_type_id=term.id))
        tagged = session.scalar(select(func.count()).select_from(Item).where(
            and_(Item.id.in_(item_ids), Item.content_type_id == term.id))) or 0
    session.delete(review)
    session.flush()
    return Filed(term, tagged, kept)


def dismiss_review(session: Session, name: str) -> None:
    """Take a category off the review list without filing it (it comes back if seen again)."""
    session.delete(_review(session, name))
    session.flush()


__all__ = ["Filed", "MoveReport", "Review", "Unfiled", "dismiss_review", "facet_of",
           "file_review", "merge", "move", "record_unfiled", "rename", "review_list"]
