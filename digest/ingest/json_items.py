"""Items from JSON: one object or a list, each checked by a strict pydantic model."""

from __future__ import annotations

import json
from datetime import datetime

import pydantic

from digest.errors import IngestError
from digest.ingest.parsed import (
    ItemIn,
    as_utc,
    bounded_guid,
    clean_names,
    is_web_url,
    title_date_guid,
    to_plain_text,
)


class _JsonItem(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", str_strip_whitespace=True)

    guid: str | None = None
    url: str | None = None
    title: str = pydantic.Field(min_length=1)
    summary: str = ""
    published_at: datetime | None = None
    content_type: str | None = None
    themes: list[str] = []
    locations: list[str] = []

    @pydantic.field_validator("url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value and not is_web_url(value):
            raise ValueError("must be an http(s) address")
        return value or None


def parse_json_items(data: bytes | str) -> list[ItemIn]:
    """Items from a JSON object or a list of objects with the keys guid, url, title,
    summary, published_at (ISO 8601), content_type, themes, locations."""
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise IngestError(f"JSON is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    raw_items = [doc] if isinstance(doc, dict) else doc
    if not isinstance(raw_items, list) or not raw_items:
        raise IngestError("JSON items: expected an object or a non-empty list of objects")

    items = []
    for index, raw in enumerate(raw_items):
        try:
            parsed = _JsonItem.model_validate(raw)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(the item itself)"
            raise IngestError(
                f"item {index}: field {where!r}: {first['msg']}"
                + (f" ({len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else "")
            ) from None
        title = to_plain_text(parsed.title)
        published_at = as_utc(parsed.published_at) if parsed.published_at else None
        content_type = clean_names([parsed.content_type] if parsed.content_type else [])
        guid = parsed.guid or parsed.url or title_date_guid(title, published_at)
        items.append(
            ItemIn(
                guid=bounded_guid(guid),
                url=parsed.url,
                title=title,
                summary=to_plain_text(parsed.summary),
                published_at=published_at,
                content_type=content_type[0] if content_type else None,
                themes=clean_names(parsed.themes),
                locations=clean_names(parsed.locations),
            )
        )
    return items
