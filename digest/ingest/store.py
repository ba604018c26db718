"""Storing parsed items: de-duplication by GUID, else URL, taxonomy resolved per batch,
and the report of what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from digest.ingest.parsed import ItemIn, title_date_guid
from digest.models import Item, utcnow
from digest.taxonomy import resolve, slugify
from digest.taxonomy_edit import Unfiled, record_unfiled

_IN_CHUNK = 500  # bound parameters per IN (...) query


@dataclass
class IngestReport:
    new_item_ids: list[int] = field(default_factory=list)
    updated_item_ids: list[int] = field(default_factory=list)
    unchanged_count: int = 0
    backfill_ids: list[int] = field(default_factory=list)  # new items too old to be mailed
    created: dict[str, list[str]] = field(default_factory=dict)  # facet -> new names
    duplicates_in_batch: int = 0  # repeats inside the document (the last kept, unless it has less)
    less_complete: int = 0  # copies not applied: the stored (or earlier) copy had more
    rejected: list[str] = field(default_factory=list)  # entries left out, with the reason
    # Categories left unfiled, each a sentence naming it and its item (kept for review).
    unfiled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{len(self.new_item_ids)} new",
            f"{len(self.updated_item_ids)} updated",
            f"{self.unchanged_count} unchanged",
        ]
        if self.backfill_ids:
            parts.append(f"{len(self.backfill_ids)} backfill (not mailed)")
        if self.duplicates_in_batch:
            parts.append(f"{self.duplicates_in_batch} duplicates skipped")
        if self.less_complete:
            parts.append(f"{self.less_complete} less complete "
                         f"cop{'y' if self.less_complete == 1 else 'ies'} ignored")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected ({'; '.join(self.rejected[:5])})")
        if self.unfiled:
            parts.append(f"{len(self.unfiled)} categor{'y' if len(self.unfiled) == 1 else 'ies'}"
                         " left unfiled")
        line = ", ".join(parts)
        created = [
            f"{facet.replace('_', ' ')}: {', '.join(names)}"
            for facet, names in self.created.items()
            if names
        ]
        if created:
            line += "; created " + "; ".join(created)
        return line


def _key(item: ItemIn) -> str:
    return item.guid or item.url or title_date_guid(item.title, item.published_at)


def _is_cut(new: str | None, old: str | None) -> bool:
    """``new`` is ``old`` cut short: a proper prefix of it (whitespace aside)."""
    new_words, old_words = " ".join((new or "").split()), " ".join((old or "").split())
    return len(new_words) < len(old_words) and old_words.startswith(new_words)


def is_less_complete(new: ItemIn, old: ItemIn) -> bool:
    """Whether ``new`` holds less than ``old``: a field ``old`` has and ``new`` lacks (link,
    date, content type, themes, locations, language), or a title or summary that is
    ``old``'s cut short. Such a copy (a page copied or fetched in part) never replaces a
    more complete one; any other difference is an edit and does."""
    fields = ("url", "published_at", "content_type", "themes", "locations", "language")
    if any(getattr(old, name) and not getattr(new, name) for name in fields):
        return True
    return _is_cut(new.title, old.title) or _is_cut(new.summary, old.summary)


def _as_parsed(stored: Item) -> ItemIn:
    return ItemIn(
        guid=stored.guid, url=stored.url, title=stored.title, summary=stored.summary or "",
        published_at=stored.published_at, language=stored.language,
        content_type=stored.content_type.name if stored.content_type else None,
        themes=[t.name for t in stored.themes], locations=[loc.name for loc in stored.locations],
    )


def _dedupe(items: list[ItemIn], keep_complete: bool) -> tuple[list[ItemIn], int, int]:
    """One entry per GUID (or URL); a later repeat replaces the earlier one unless
    ``keep_complete`` and it is less complete (then it is counted, not kept)."""
    slot_by_key: dict[str, int] = {}
    out: list[ItemIn] = []
    less_complete = 0
    for item in items:
        keys = [_key(item)] + ([item.url] if item.url else [])
        slot = next((slot_by_key[k] for k in keys if k in slot_by_key), None)
        if slot is None:
            slot = len(out)
            out.append(item)
        elif keep_complete and is_less_complete(item, out[slot]):
            less_complete += 1
            continue
        else:
            out[slot] = item
        for k in keys:
            slot_by_key[k] = slot
    return out, len(items) - len(out) - less_complete, less_complete


def _existing(session: Session, keys: list[str], urls: list[str]) -> tuple[dict, dict]:
    """Stored items matching the batch, by GUID and by URL (a few chunked queries)."""
    by_guid: dict[str, Item] = {}
    by_url: dict[str, Item] = {}
    for start in range(0, max(len(keys), len(urls)), _IN_CHUNK):
        key_chunk, url_chunk = keys[start:start + _IN_CHUNK], urls[start:start + _IN_CHUNK]
        query = (
            select(Item)
            .where(or_(Item.guid.in_(key_chunk), Item.url.in_(url_chunk)))
            .options(selectinload(Item.themes), selectinload(Item.locations))
        )
        for stored in session.scalars(query):
            by_guid[stored.guid] = stored
            if stored.url:
                by_url.setdefault(stored.url, stored)
    return by_guid, by_url


def store_items(
    session: Session,
    items: list[ItemIn],
    *,
    source: str,
    max_age_days: int,
    now: datetime | None = None,
    source_id: int | None = None,
    backfill: bool = False,
    keep_complete: bool = False,
) -> IngestReport:
    """Insert new items and update known ones (matched by GUID, else URL); flushes, the
    caller commits.

    A known item keeps its ``ingested_at``, so an update is never mailed again. A new item
    published more than ``max_age_days`` (``settings.max_item_age_days``) before
    ``now`` is archive backfill (``is_backfill``), stored but never mailed. Unknown
    taxonomy names are created and listed in the report. ``source_id``: the registered source
    the items came from; ``backfill``: every new item is archive backfill whatever its date (a
    source's first pages of history). ``keep_complete``: the items were read from a page or a
    feed that may have been fetched in part (a listing, a feed), so a copy that holds less
    than the stored or an earlier one (``is_less_complete``) replaces neither; items stated
    as JSON or through the API are taken as given (an editor may mean to drop a field).
    """
    now = utcnow() if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    oldest_fresh = now - timedelta(days=max_age_days)
    report = IngestReport()
    items, report.duplicates_in_batch, report.less_complete = _dedupe(items, keep_complete)
    report.unfiled = [f"item {item.title[:80]!r}: category {name!r} has no domain and {why}; "
                      "left unfiled" for item in items for name, why in item.unfiled]
    if not items:
        return report

    # Taxonomy: one resolve per facet for the whole batch.
    resolved = {
        "theme": resolve(session, "theme", [n for i in items for n in i.themes], create=True),
        "location": resolve(
            session, "location", [n for i in items for n in i.locations], create=True
        ),
        "content_type": resolve(
            session, "content_type", [i.content_type for i in items if i.content_type],
            create=True,
        ),
    }
    report.created = {facet: found.created for facet, found in resolved.items() if found.created}
    by_slug = {facet: {m.slug: m for m in found} for facet, found in resolved.items()}

    def models(facet: str, names: list[str]) -> list:
        return list({id(m): m for m in (by_slug[facet][slugify(n)] for n in names)}.values())

    by_guid, by_url = _existing(
        session, [_key(i) for i in items], sorted({i.url for i in items if i.url})
    )
    fresh: list[tuple[Item, bool]] = []
    changed: list[Item] = []
    for item in items:
        themes = models("theme", item.themes)
        locations = models("location", item.locations)
        content_type = (
            by_slug["content_type"][slugify(item.content_type)] if item.content_type else None
        )
        stored = by_guid.get(_key(item)) or (by_url.get(item.url) if item.url else None)
        if stored is None:
            new = Item(
                guid=_key(item),
                url=item.url,
                title=item.title,
                summary=item.summary,
                published_at=item.published_at,
                ingested_at=now,
                updated_at=now,
                source=source[:200],
                is_backfill=backfill or bool(
                    item.published_at and item.published_at < oldest_fresh),
                source_id=source_id,
                language=item.language,
                content_type=content_type,
                themes=themes,
                locations=locations,
            )
            session.add(new)
            fresh.append((new, new.is_backfill))
            continue
        if keep_complete and is_less_complete(item, _as_parsed(stored)):
            report.less_complete += 1  # a cut copy: the stored one stays as it is
            continue
        wanted = {
            "url": item.url or stored.url,
            "title": item.title,
            "summary": item.summary,
            "published_at": item.published_at or stored.published_at,
            "language": item.language or stored.language,
        }
        differs = (
            any(getattr(stored, name) != value for name, value in wanted.items())
            or stored.content_type is not content_type
            or set(stored.themes) != set(themes)
            or set(stored.locations) != set(locations)
        )
        if not differs:
            report.unchanged_count += 1
            continue
        for name, value in wanted.items():
            setattr(stored, name, value)
        stored.content_type = content_type
        stored.themes = themes
        stored.locations = locations
        stored.updated_at = now
        changed.append(stored)

    session.flush()
    report.new_item_ids = [new.id for new, _ in fresh]
    report.backfill_ids = [new.id for new, backfill in fresh if backfill]
    report.updated_item_ids = [stored.id for stored in changed]
    _keep_for_review(session, items, source=source, now=now)
    return report


def _keep_for_review(session: Session, items: list[ItemIn], *, source: str,
                     now: datetime) -> None:
    """Each unfiled category on the review list (``digest taxonomy review``), linked to the
    stored items that carried it, so filing it later tags them."""
    carrying = [item for item in items if item.unfiled]
    if not carrying:
        return
    by_guid, by_url = _existing(session, [_key(i) for i in carrying],
                                sorted({i.url for i in carrying if i.url}))
    found: dict[str, Unfiled] = {}
    for item in carrying:
        stored = by_guid.get(_key(item)) or (by_url.get(item.url) if item.url else None)
        for name, why in item.unfiled:
            entry = found.setdefault(slugify(name), Unfiled(name, why, []))
            if stored is not None:
                entry.item_ids.append(stored.id)
    record_unfiled(session, list(found.values()), source=source, now=now)
