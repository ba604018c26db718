"""Items: publishing them (stored, then announced: item_published), and reading them back.

The reading side is deliberately small: the newest first, up to ``limit``, and one by id.
Its answers are objects (a page with ``items``), so filters and a cursor can be added later
without changing what a client reads today.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from digest import ingest
from digest.errors import ValidationError
from digest.models import Item
from digest.web.api.schemas import MAX_PAGE, IdPath, ItemPayload, PublishResult
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

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(
            id=item.id, guid=item.guid, url=item.url, title=item.title, summary=item.summary,
            published_at=item.published_at, ingested_at=item.ingested_at,
            updated_at=item.updated_at,
            content_type=item.content_type.name if item.content_type else None,
            themes=[t.name for t in item.themes], locations=[loc.name for loc in item.locations],
            is_backfill=item.is_backfill, source=item.source,
        )


class ItemPage(BaseModel):
    items: list[ItemOut]


def _with_facets():
    return (selectinload(Item.themes), selectinload(Item.locations),
            selectinload(Item.content_type))


@router.get("/items", response_model=ItemPage, tags=["items"])
def list_items(session: SessionDep, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50):
    """The newest items first (by when they were ingested), ``limit`` of them."""
    items = session.scalars(select(Item).order_by(Item.ingested_at.desc(), Item.id.desc())
                            .limit(limit).options(*_with_facets()))
    return ItemPage(items=[ItemOut.of(item) for item in items])


@router.get("/items/{item_id}", response_model=ItemOut, tags=["items"],
            responses={404: {"description": "No such item"}})
def get_item(item_id: IdPath, session: SessionDep):
    item = session.scalars(select(Item).where(Item.id == item_id)
                           .options(*_with_facets())).one_or_none()
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}; GET /api/v1/items lists the "
                                 "newest")
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
