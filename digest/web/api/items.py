"""Items: publishing them (stored, then announced: item_published), and reading them back.

Reading: a page of items, newest first, with filters (facets, dates, source, language, text)
and an opaque cursor (keyset on the item's moment and id, so a page never repeats or skips an
item while new ones arrive); and one item by id.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Table, and_, func, or_, select
from sqlalchemy.orm import selectinload

from digest import ingest, taxonomy
from digest.errors import NotFoundError, ValidationError
from digest.models import Item, Location, UTCDateTime, item_locations, item_themes
from digest.web.api.schemas import MAX_ID, MAX_PAGE, IdPath, ItemPayload, PublishResult
from digest.web.deps import SessionDep, SettingsDep

router = APIRouter()


class ItemOut(BaseModel):
    id: int
    guid: str
    url: str | None
    title: str
    summary: str
    published_at: datetime | None
    ingested_at: datetime
    updated_at: datetime
    content_type: str | None
    themes: list[str]
    locations: list[str]
    is_backfill: bool
    source: str
    source_id: int | None = None
    language: str | None = None

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(
            id=item.id, guid=item.guid, url=item.url, title=item.title, summary=item.summary,
            published_at=item.published_at, ingested_at=item.ingested_at,
            updated_at=item.updated_at,
            content_type=item.content_type.name if item.content_type else None,
            themes=[t.name for t in item.themes], locations=[loc.name for loc in item.locations],
            is_backfill=item.is_backfill, source=item.source, source_id=item.source_id,
            language=item.language,
        )


class ItemPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None = None  # give it as ``cursor`` for the next page; None: no more


def _with_facets():
    return (selectinload(Item.themes), selectinload(Item.locations),
            selectinload(Item.content_type))


# The order of the list, newest first: when it was published, else when it came in; the id
# breaks ties, so the cursor (the last item's pair) names one place in the order.
item_moment = func.coalesce(Item.published_at, Item.ingested_at, type_=UTCDateTime())
_BAD_CURSOR = ("bad cursor: give the next_cursor value of a previous page exactly as it was "
               "sent, or leave cursor out for the first page")


def encode_cursor(moment: datetime, item_id: int) -> str:
    raw = json.dumps([moment.isoformat(), item_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (moment, id) a cursor names; ValidationError (422) for anything else."""
    try:
        moment, item_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(moment)
        if when.tzinfo is None or not isinstance(item_id, int) or isinstance(item_id, bool):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationError(_BAD_CURSOR) from None
    return when, item_id


def _term_ids(session, facet: taxonomy.Facet, names: list[str]) -> list[int]:
    """Ids of the named terms (by name or slug; UnknownTaxonomyError lists the valid ones);
    a region stands for its places too, as in subscribers' filters."""
    ids = [t.id for t in taxonomy.resolve(session, facet, names, create=False)]
    if facet == "location" and ids:
        ids += session.scalars(select(Location.id).where(Location.parent_id.in_(ids))).all()
    return ids


Names = Annotated[list[str] | None, Query(max_length=50)]
Moment = Annotated[datetime | None, Query()]


@router.get("/items", response_model=ItemPage, tags=["items"])
def list_items(  # noqa: PLR0913 (one parameter per filter)
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    theme: Names = None,
    location: Names = None,
    content_type: Names = None,
    published_after: Moment = None,
    published_before: Moment = None,
    source: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    language: Annotated[str | None, Query(max_length=16)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    include_backfill: bool = True,
):
    """Items, newest first (by when they were published, else ingested), ``limit`` a page.

    Filters: ``theme``, ``location``, ``content_type`` (repeatable, by name or slug; several
    values of one facet: any of them; a region takes its places), ``published_after`` /
    ``published_before`` (ISO 8601; an item without a date counts its ingest time),
    ``source`` (a registered source's id), ``language``, ``q`` (in the title or summary, any
    case), ``include_backfill=false`` to leave out archive backfill. ``next_cursor``, given as
    ``cursor`` with the same filters, reads the next page; every item comes once.
    """
    conditions: list[ColumnElement[bool]] = []
    facets: tuple[tuple[taxonomy.Facet, list[str] | None, Table, str], ...] = (
        ("theme", theme, item_themes, "theme_id"),
        ("location", location, item_locations, "location_id"))
    for facet, names, table, column in facets:
        if names:
            ids = _term_ids(session, facet, names)
            conditions.append(Item.id.in_(select(table.c.item_id)
                                          .where(table.c[column].in_(ids))))
    if content_type:
        conditions.append(Item.content_type_id.in_(_term_ids(session, "content_type",
                                                             content_type)))
    for when, name in ((published_after, "published_after"),
                       (published_before, "published_before")):
        if when is not None and when.tzinfo is None:
            raise ValidationError(f"{name} {when.isoformat()} has no time zone; add one, "
                                  "e.g. 2025-10-01T00:00:00Z")
    if published_after is not None:
        conditions.append(item_moment >= published_after)
    if published_before is not None:
        conditions.append(item_moment <= published_before)
    if source is not None:
        conditions.append(Item.source_id == source)
    if language:
        conditions.append(func.lower(Item.language) == language.strip().lower())
    if q and q.strip():
        pattern = "%" + q.strip().lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        conditions.append(or_(func.lower(Item.title).like(pattern, escape="\\"),
                              func.lower(Item.summary).like(pattern, escape="\\")))
    if not include_backfill:
        conditions.append(~Item.is_backfill)
    if cursor is not None:
        moment, last_id = decode_cursor(cursor)
        conditions.append(or_(item_moment < moment, and_(item_moment == moment, Item.id < last_id)))
    rows = session.execute(
        select(Item, item_moment).where(*conditions).order_by(item_moment.desc(), Item.id.desc())
        .limit(limit + 1).options(*_with_facets())).all()
    page = rows[:limit]
    next_cursor = (encode_cursor(page[-1][1], page[-1][0].id)
                   if len(rows) > limit else None)
    return ItemPage(items=[ItemOut.of(item) for item, _ in page], next_cursor=next_cursor)


@router.get("/items/{item_id}", response_model=ItemOut, tags=["items"],
            responses={404: {"description": "No such item"}})
def get_item(item_id: IdPath, session: SessionDep):
    item = session.scalars(select(Item).where(Item.id == item_id)
                           .options(*_with_facets())).one_or_none()
    if item is None:
        raise NotFoundError(f"no item with id {item_id}; GET /api/v1/items lists them, newest "
                            "first, with filters")
    return ItemOut.of(item)


@router.post("/items", response_model=PublishResult, tags=["items"])
def publish_items(body: ItemPayload | list[ItemPayload], request: Request, session: SessionDep,
                  settings: SettingsDep):
    """Store items (new taxonomy names are created) and send the item_published event for
    each new one: subscribers who want every item at once get an alert."""
    payload = body if isinstance(body, list) else [body]
    if not payload or len(payload) > 500:
        raise ValidationError("send between 1 and 500 items per request")
    items = ingest.parse_json_items(
        json.dumps([p.model_dump(mode="json", exclude_none=True) for p in payload])
    )
    report = ingest.store_items(session, items, source="api",
                                max_age_days=settings.max_item_age_days)
    session.commit()
    # After the commit, so the worker sees the rows; the app's queue, made at start-up.
    request.app.state.queue.publish_items(report.new_item_ids)
    return PublishResult(
        new_item_ids=report.new_item_ids,
        updated_item_ids=report.updated_item_ids,
        unchanged=report.unchanged_count,
        backfill_item_ids=report.backfill_ids,
        created=report.created,
    )
