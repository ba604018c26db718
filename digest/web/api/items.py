"""Publishing items: store them, then announce the new ones (item_published)."""

from __future__ import annotations

import json

from fastapi import APIRouter

from digest import ingest
from digest.errors import ValidationError
from digest.queue import queue_for
from digest.web.api.schemas import ItemPayload, PublishResult
from digest.web.deps import SessionDep, SettingsDep

router = APIRouter()


@router.post("/items", response_model=PublishResult, tags=["items"])
def publish_items(body: ItemPayload | list[ItemPayload], session: SessionDep,
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
    # After the commit, so the worker sees the rows.
    queue_for(settings).publish_items(report.new_item_ids)
    return PublishResult(
        new_item_ids=report.new_item_ids,
        updated_item_ids=report.updated_item_ids,
        unchanged=report.unchanged_count,
        backfill_item_ids=report.backfill_ids,
        created=report.created,
    )
