"""Ingest: read items from a listing text, an RSS/Atom feed or JSON, and store them.

Parsers are pure (text in, ``ItemIn`` list out). ``store_items`` de-duplicates and writes;
the ``ingest_*`` entry points read, parse and store in one transaction, so a bad document
writes nothing. Nothing here dispatches events: the caller sends ``item_published`` for
``report.new_item_ids`` once the transaction has committed.

Titles and summaries are stored as plain text (tags stripped, entities decoded); whatever
shows them escapes them again.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

import feedparser
import httpx
import nh3
import pydantic
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from digest.db import session_scope
from digest.errors import IngestError
from digest.models import Item, utcnow
from digest.settings import get_settings
from digest.taxonomy import FACETS, clean_name, resolve, slugify
from digest.taxonomy import known_facets as load_known_facets

MAX_FETCH_BYTES = 5 * 1024 * 1024
_GUID_MAX = 1000  # items.guid column width
_IN_CHUNK = 500  # bound parameters per IN (...) query


@dataclass
class ItemIn:
    """One parsed item, before it meets the database."""

    guid: str
    url: str | None
    title: str
    summary: str = ""
    published_at: datetime | None = None  # tz-aware UTC
    content_type: str | None = None
    themes: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    new_item_ids: list[int] = field(default_factory=list)
    updated_item_ids: list[int] = field(default_factory=list)
    unchanged_count: int = 0
    backfill_ids: list[int] = field(default_factory=list)  # new items too old to be mailed
    created: dict[str, list[str]] = field(default_factory=dict)  # facet -> new names
    duplicates_in_batch: int = 0  # items repeated inside the document (last one kept)

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
        line = ", ".join(parts)
        created = [
            f"{facet.replace('_', ' ')}: {', '.join(names)}"
            for facet, names in self.created.items()
            if names
        ]
        if created:
            line += "; created " + "; ".join(created)
        return line


# --- cleaning -----------------------------------------------------------------------------

# Block-level tags separate words; without a space "<p>a</p><p>b</p>" would read "ab".
_BLOCK_TAG = re.compile(
    r"<\s*/?\s*(?:br|p|div|li|ul|ol|h[1-6]|tr|td|th|table|blockquote|section|article|hr)\b[^>]*>",
    re.IGNORECASE,
)


def to_plain_text(value: str | None) -> str:
    """Markup to plain text: every tag dropped (script/style with their content), entities
    decoded, whitespace collapsed."""
    if not value:
        return ""
    stripped = nh3.clean(_BLOCK_TAG.sub(" ", value), tags=set())
    return " ".join(html.unescape(stripped).split())


def _names(values) -> list[str]:
    """Cleaned, non-blank names, duplicates (by slug) removed, order kept."""
    seen: set[str] = set()
    out: list[str] = []
    for value in values or []:
        name = clean_name(to_plain_text(value))
        slug = slugify(name)
        if slug and slug not in seen:  # a name of punctuation only cannot be stored
            seen.add(slug)
            out.append(name)
    return out


def _split(value: str) -> list[str]:
    return _names(value.split(","))


def _is_web_url(url: str) -> bool:
    return url.lower().startswith(("http://", "https://")) and len(url) > len("https://")


def _hash_guid(*parts: str) -> str:
    digest = hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()
    return f"urn:digest:{digest[:40]}"


def _title_date_guid(title: str, published_at: datetime | None) -> str:
    normalised = " ".join(title.casefold().split())
    return _hash_guid(normalised, published_at.date().isoformat() if published_at else "")


def _bounded_guid(guid: str) -> str:
    return guid if len(guid) <= _GUID_MAX else _hash_guid(guid)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:  # no zone given: the newsroom's dates are UTC
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


# --- the listing text -----------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
            ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
            ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_DATE_LINE = re.compile(r"^\s*publishing date\s*:\s*(.*)$", re.IGNORECASE)
_FIELD_LINE = re.compile(
    r"^\s*(content type|where we are|what we do|url)\s*:\s*(.*)$", re.IGNORECASE
)


def _listing_date(value: str, lineno: int) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d{1,2})\s+([A-Za-z]+)\.?\s+(\d{4})", value)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if match and month:
        try:
            return datetime(int(match.group(3)), month, int(match.group(1)), tzinfo=timezone.utc)
        except ValueError:
            pass
    raise IngestError(
        f"line {lineno}: invalid publishing date {value!r}; write it as 'D Month YYYY', "
        "e.g. '9 October 2025'"
    )


def parse_listing(text: str) -> list[ItemIn]:
    """Items from the newsroom's listing text.

    An item starts with a title line followed by ``Publishing date: D Month YYYY``; then come
    optional ``Content type:``, ``Where we are:``, ``What we do:`` (comma-separated) and
    ``URL:`` lines, then summary lines up to the next title. Lines before the first title
    (the page header) are skipped.
    """
    lines = [(n, line.strip()) for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    starts = [
        i
        for i in range(len(lines) - 1)
        if _DATE_LINE.match(lines[i + 1][1])
        and not _DATE_LINE.match(lines[i][1])
        and not _FIELD_LINE.match(lines[i][1])
    ]
    if not starts:
        raise IngestError(
            "no items found: an item is a title line followed by "
            "'Publishing date: D Month YYYY'"
        )

    items = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        title = to_plain_text(lines[start][1])
        date_lineno, date_line = lines[start + 1]
        published_at = _listing_date(_DATE_LINE.match(date_line).group(1), date_lineno)

        meta: dict[str, str] = {}
        pos = start + 2
        while pos < end and (match := _FIELD_LINE.match(lines[pos][1])):
            key, value = match.group(1).lower(), match.group(2).strip()
            if key == "url" and value and not _is_web_url(value):
                raise IngestError(
                    f"line {lines[pos][0]}: URL {value!r} is not an http(s) address"
                )
            meta[key] = f"{meta[key]}, {value}" if key in meta and key != "url" else value
            pos += 1
        summary = to_plain_text(" ".join(line for _, line in lines[pos:end]))

        url = meta.get("url") or None
        content_type = _split(meta.get("content type", ""))
        items.append(
            ItemIn(
                guid=_bounded_guid(url) if url else _title_date_guid(title, published_at),
                url=url,
                title=title,
                summary=summary,
                published_at=published_at,
                content_type=content_type[0] if content_type else None,
                themes=_split(meta.get("what we do", "")),
                locations=_split(meta.get("where we are", "")),
            )
        )
    return items


# --- RSS / Atom -----------------------------------------------------------------------------

# Category scheme (Atom) or domain (RSS) -> facet; checked in this order.
_SCHEME_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("theme", ("theme", "what-we-do", "what_we_do", "topic")),
    ("location", ("location", "where-we-are", "where_we_are", "region", "place")),
    ("content_type", ("content-type", "content_type", "contenttype", "type")),
)


def _facet_of_scheme(scheme: str | None) -> str | None:
    scheme = (scheme or "").lower()
    for facet, hints in _SCHEME_HINTS:
        if any(hint in scheme for hint in hints):
            return facet
    return None


def parse_feed(data: bytes, known_facets: Mapping[str, str] | None = None) -> list[ItemIn]:
    """Items from an RSS 2.0 or Atom document (bytes, never a URL: fetch() reads URLs).

    Each category goes to the facet its scheme/domain names; without a telling scheme, to the
    facet ``known_facets`` (slug -> facet, see taxonomy.known_facets) has for it; else it is
    a theme. An item has one content type: the first one wins.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("parse_feed takes the document's bytes; use fetch() for a URL")
    parsed = feedparser.parse(bytes(data))
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if problem is not None and not isinstance(problem, feedparser.CharacterEncodingOverride):
        raise IngestError(f"malformed feed: {type(problem).__name__}: {problem}")
    if not parsed.get("version"):
        raise IngestError("not an RSS or Atom feed: no <rss> or <feed> element found")

    known = known_facets or {}
    items = []
    for entry in parsed.entries:
        title = to_plain_text(entry.get("title"))
        summary = to_plain_text(entry.get("summary") or "")
        link = (entry.get("link") or "").strip()
        url = link if _is_web_url(link) else None  # no javascript: links in a digest
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        published_at = datetime(*stamp[:6], tzinfo=timezone.utc) if stamp else None

        facets: dict[str, list[str]] = {facet: [] for facet in FACETS}
        for tag in entry.get("tags") or []:
            name = clean_name(to_plain_text(tag.get("label") or tag.get("term") or ""))
            if not name:
                continue
            facet = _facet_of_scheme(tag.get("scheme")) or known.get(slugify(name), "theme")
            facets[facet].append(name)
        content_types = _names(facets["content_type"])

        guid = (entry.get("id") or "").strip() or url or _title_date_guid(title, published_at)
        items.append(
            ItemIn(
                guid=_bounded_guid(guid),
                url=url,
                title=title,
                summary=summary,
                published_at=published_at,
                content_type=content_types[0] if content_types else None,
                themes=_names(facets["theme"]),
                locations=_names(facets["location"]),
            )
        )
    return items


# --- JSON -----------------------------------------------------------------------------------


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
        if value and not _is_web_url(value):
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
        published_at = _utc(parsed.published_at) if parsed.published_at else None
        content_type = _names([parsed.content_type] if parsed.content_type else [])
        guid = parsed.guid or parsed.url or _title_date_guid(title, published_at)
        items.append(
            ItemIn(
                guid=_bounded_guid(guid),
                url=parsed.url,
                title=title,
                summary=to_plain_text(parsed.summary),
                published_at=published_at,
                content_type=content_type[0] if content_type else None,
                themes=_names(parsed.themes),
                locations=_names(parsed.locations),
            )
        )
    return items


# --- fetching -------------------------------------------------------------------------------


def fetch(url: str, timeout: float = 10, max_bytes: int = MAX_FETCH_BYTES) -> bytes:
    """The body at an http(s) URL, read up to ``max_bytes``; IngestError on any failure."""
    if not _is_web_url(url):
        raise IngestError(f"cannot fetch {url!r}: only http:// and https:// URLs are read")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5) as client:
            with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise IngestError(
                        f"fetching {url} failed: HTTP {response.status_code} "
                        f"{response.reason_phrase}"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise IngestError(
                        f"{url} is {int(declared)} bytes, over the {max_bytes}-byte limit"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise IngestError(
                            f"{url} sent more than the {max_bytes}-byte limit; stopped reading"
                        )
                return bytes(body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise IngestError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None


# --- storing --------------------------------------------------------------------------------


def _key(item: ItemIn) -> str:
    return item.guid or item.url or _title_date_guid(item.title, item.published_at)


def _dedupe(items: list[ItemIn]) -> tuple[list[ItemIn], int]:
    """One entry per GUID (or URL); a later repeat replaces the earlier one."""
    slot_by_key: dict[str, int] = {}
    out: list[ItemIn] = []
    for item in items:
        keys = [_key(item)] + ([item.url] if item.url else [])
        slot = next((slot_by_key[k] for k in keys if k in slot_by_key), None)
        if slot is None:
            slot = len(out)
            out.append(item)
        else:
            out[slot] = item
        for k in keys:
            slot_by_key[k] = slot
    return out, len(items) - len(out)


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
    now: datetime | None = None,
    max_age_days: int | None = None,
) -> IngestReport:
    """Insert new items and update known ones (matched by GUID, else URL); flushes, the
    caller commits.

    A known item keeps its ``ingested_at``, so an update is never mailed again. A new item
    published more than ``max_age_days`` (default: settings.max_item_age_days) before
    ``now`` is archive backfill (``is_backfill``), stored but never mailed. Unknown
    taxonomy names are created and listed in the report.
    """
    now = utcnow() if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if max_age_days is None:
        max_age_days = get_settings().max_item_age_days
    oldest_fresh = now - timedelta(days=max_age_days)
    report = IngestReport()
    items, report.duplicates_in_batch = _dedupe(items)
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
                is_backfill=bool(item.published_at and item.published_at < oldest_fresh),
                content_type=content_type,
                themes=themes,
                locations=locations,
            )
            session.add(new)
            fresh.append((new, new.is_backfill))
            continue
        wanted = {
            "url": item.url or stored.url,
            "title": item.title,
            "summary": item.summary,
            "published_at": item.published_at or stored.published_at,
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
    return report


# --- entry points: read, parse and store in one transaction --------------------------------


def _read(path: str | Path, *, text: bool) -> str | bytes:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8") if text else path.read_bytes()
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "it is a directory, not a file"
    except PermissionError:
        reason = "permission denied"
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise IngestError(f"cannot read {path}: {reason}")


def ingest_listing(
    path: str | Path, *, now: datetime | None = None, max_age_days: int | None = None
) -> IngestReport:
    """Read a listing text file and store its items."""
    items = parse_listing(_read(path, text=True))
    with session_scope() as session:
        return store_items(
            session, items, source=f"listing:{Path(path).name}", now=now,
            max_age_days=max_age_days,
        )


def ingest_feed(
    source: str | Path, *, now: datetime | None = None, max_age_days: int | None = None
) -> IngestReport:
    """Fetch (http/https URL) or read (path) an RSS/Atom feed and store its items."""
    is_url = isinstance(source, str) and re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I)
    data = fetch(source) if is_url else _read(source, text=False)  # before any transaction
    with session_scope() as session:
        items = parse_feed(data, load_known_facets(session))
        return store_items(
            session, items, source=f"feed:{source}", now=now, max_age_days=max_age_days
        )


def ingest_json(
    path_or_text: str | bytes | Path,
    *,
    now: datetime | None = None,
    max_age_days: int | None = None,
) -> IngestReport:
    """Store items from JSON given as text/bytes (starting with '{' or '[') or a file path."""
    data: Any = path_or_text
    is_document = isinstance(data, (str, bytes)) and data.lstrip()[:1] in ("{", "[", b"{", b"[")
    if not is_document:
        data = _read(path_or_text, text=True)
    items = parse_json_items(data)
    with session_scope() as session:
        return store_items(session, items, source="json", now=now, max_age_days=max_age_days)
