"""What the renderer takes (``RenderItem``, ``Recipient``) and gives (``RenderedEmail``),
and the item views templates see, grouped and cached."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from digest.render.dates import day_text, local_date
from digest.render.fragments import Fragment
from digest.render.text import plain_text, safe_url, truncate, wrap_text

if TYPE_CHECKING:
    from digest import models


class _HashedOnce:
    """A frozen dataclass's hash, computed on first use and kept: items and their views are
    looked up in caches for every message that shows them (``item_view``, the fragment
    cache). Not pickled: string hashes differ from process to process. (Each dataclass
    names ``__hash__`` in its body, else the decorator writes its own.)"""

    def __hash__(self) -> int:
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            fields = self.__dataclass_fields__  # type: ignore[attr-defined]
            cached = hash(tuple(getattr(self, name) for name in fields))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}


@dataclass(frozen=True)
class RenderItem(_HashedOnce):
    __hash__ = _HashedOnce.__hash__

    id: int
    title: str
    url: str | None
    summary: str
    published_at: datetime | None
    content_type: str | None
    themes: tuple[str, ...]
    locations: tuple[str, ...]


@dataclass(frozen=True)
class Recipient:
    subscriber_id: int
    email: str
    group_by: str = "theme"  # or "location"
    manage_url: str = ""
    unsubscribe_url: str = ""
    view_url: str | None = None
    feed_url: str = ""  # the personal Atom feed, linked from the footer
    timezone: str = "UTC"
    # The themes/locations the subscriber chose (names, any filter). Optional: they decide
    # which group an item with several themes goes under, and the "of your themes" wording.
    themes: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    # The cached blocks each part was composed from, in order (see fragments.py): the mail
    # stage reuses their encodings. Not part of the email's value.
    html_fragments: tuple[Fragment, ...] = field(default=(), compare=False, repr=False)
    text_fragments: tuple[Fragment, ...] = field(default=(), compare=False, repr=False)
    # The MIME boundary every message of one shared content uses (``digest.mail.compose``
    # renders a content once for all its readers), so its encoded start is the same bytes
    # and signs alike; None: a fresh one per message. Not part of the email's value.
    boundary: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ItemView(_HashedOnce):
    """An item as templates see it: links checked, dates local, text cut and wrapped."""

    __hash__ = _HashedOnce.__hash__

    id: int
    title: str
    url: str
    date_text: str
    content_type: str
    themes: tuple[str, ...]
    locations: tuple[str, ...]
    summary: str
    meta_line: str  # date · type · locations
    labels_line: str  # themes
    # Pre-wrapped for the text part (wrapping is the costly part; items repeat across people).
    title_text: str
    meta_text: str
    summary_text: str
    labels_text: str


@dataclass(frozen=True)
class Group:
    name: str
    items: list[ItemView]


@lru_cache(maxsize=8192)
def item_view(item: RenderItem, zone_name: str, fallback_url: str) -> ItemView:
    # Cached: in a run the same items go to many subscribers in few time zones.
    title = " ".join(item.title.split())
    date_text = ""
    if item.published_at is not None:
        date_text = day_text(local_date(item.published_at, ZoneInfo(zone_name)))
    content_type = item.content_type or ""
    parts = (date_text, content_type, ", ".join(item.locations))
    meta_line = " \u00b7 ".join(p for p in parts if p)
    labels_line = ", ".join(item.themes)
    summary = truncate(plain_text(item.summary or ""))
    return ItemView(
        id=item.id, title=title, url=safe_url(item.url, fallback_url), date_text=date_text,
        content_type=content_type, themes=item.themes, locations=item.locations,
        summary=summary, meta_line=meta_line, labels_line=labels_line,
        title_text=wrap_text(title), meta_text=wrap_text(meta_line),
        summary_text=wrap_text(summary),
        labels_text=wrap_text(f"Themes: {labels_line}") if labels_line else "",
    )


def group_key(item: RenderItem, group_by: str, chosen: frozenset[str]) -> str | None:
    labels = item.themes if group_by == "theme" else item.locations
    # An item with several themes (or locations) is listed once, under the first of its
    # labels the reader chose, else under its first label, so nobody reads it twice.
    for label in labels:
        if label.casefold() in chosen:
            return label
    return labels[0] if labels else None


def newest_first(item: RenderItem) -> tuple[bool, float]:
    return (item.published_at is None, -(item.published_at.timestamp() if item.published_at else 0))


def render_items_from_models(items: Iterable[models.Item]) -> list[RenderItem]:
    """Plain, hashable snapshots of ORM items (load themes, locations, content_type first)."""
    return [
        RenderItem(
            id=item.id,
            title=item.title,
            url=item.url,
            summary=item.summary or "",
            published_at=item.published_at,
            content_type=item.content_type.name if item.content_type is not None else None,
            themes=tuple(t.name for t in item.themes),
            locations=tuple(loc.name for loc in item.locations),
        )
        for item in items
    ]
