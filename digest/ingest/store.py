"""Ingest: read items from a listing text, an RSS/Atom feed or JSON, and store them.

Parsers are pure (text in, ``ItemIn`` list out). ``store_items`` de-duplicates and writes;
the ``ingest_*`` entry points read, parse and store in one transaction, so a bad document
writes nothing. Nothing here dispatches events: the caller sends ``item_published`` for
``report.new_item_ids`` once the transaction has committed.

Titles and summaries are stored as plain text (tags stripped, entities decoded); whatever
shows them escapes them again.
"""

from __future__ import annotations

import codecs
import email.message
import hashlib
import html
import json
import re
import xml.parsers.expat
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
MAX_FILE_BYTES = MAX_FETCH_BYTES  # listing, feed and JSON files read from disk
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
    rejected: list[str] = field(default_factory=list)  # entries left out, with the reason

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
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected ({'; '.join(self.rejected[:5])})")
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


_BOMS: tuple[tuple[bytes, str], ...] = (  # longest first: UTF-32 LE starts like UTF-16 LE
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Without a BOM, the XML spec's own sniffing: how '<?' looks in a 16/32-bit encoding.
_WIDE_STARTS: tuple[tuple[bytes, str], ...] = (
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00?\x00", "utf-16-le"),
    (b"\x00<\x00?", "utf-16-be"),
)
_XML_DECL = re.compile(rb"^\s*<\?xml\b[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
_XML_DECL_TEXT = re.compile(r"^(\s*<\?xml\b[^>]*?\bencoding\s*=\s*[\"'])([^\"']*)([\"'])")
# Labels that mean a wider encoding in practice (WHATWG): "gb2312" feeds use GBK characters.
_WIDER = {"gb2312": "gbk", "euc_cn": "gbk"}


def _codec(label: str, where: str) -> str:
    try:
        name = codecs.lookup(label).name
    except LookupError:
        raise IngestError(
            f"unknown character encoding {label!r} in the {where}; use a standard name "
            "such as utf-8, windows-1251 or gbk"
        ) from None
    return _WIDER.get(name.replace("-", "_"), name)


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header value, or None."""
    if not content_type:
        return None
    message = email.message.Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    return str(charset).strip() or None if isinstance(charset, str) else None


def decode_feed(data: bytes, http_charset: str | None = None) -> str:
    """The feed's text, decoded strictly, or IngestError naming the encoding and byte offset.

    The encoding comes from, in this order: a byte order mark, the HTTP charset (RFC 7303
    lets it override the document), the XML declaration, else UTF-8. Nothing is guessed:
    a legacy encoding that nobody declares fails as UTF-8 and is refused, where feedparser
    would have read it as windows-1252 and stored mojibake.
    """
    body = bytes(data)
    bom = next(((mark, name) for mark, name in _BOMS if body.startswith(mark)), None)
    declared = _XML_DECL.match(body[:1024])
    if bom is not None:
        body, encoding, where = body[len(bom[0]):], bom[1], "from its byte order mark"
    elif http_charset:
        encoding = _codec(http_charset, "HTTP Content-Type charset")
        where = "from the HTTP Content-Type charset"
    elif (wide := next((n for start, n in _WIDE_STARTS if body.startswith(start)), None)):
        encoding, where = wide, "from its first bytes, UTF-16/32 without a byte order mark"
    elif declared:
        label = declared.group(1).decode("ascii")
        encoding, where = _codec(label, "XML declaration"), "from its XML declaration"
        if encoding.startswith(("utf-16", "utf-32")):
            raise IngestError(
                f"the XML declaration says {label!r} but the document has no byte order mark "
                "and is written in a one-byte encoding; fix the declaration"
            )
    else:
        encoding, where = "utf-8", "no encoding declared, so UTF-8"
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(bom[0]) if bom else 0)
        hint = (
            "; declare the real encoding in the XML declaration "
            "(<?xml version=\"1.0\" encoding=\"windows-1251\"?>) or the HTTP charset"
            if where.startswith("no encoding") else ""
        )
        raise IngestError(
            f"feed is not valid {encoding} ({where}): undecodable byte "
            f"0x{body[exc.start]:02x} at byte offset {offset}{hint}; refused rather than "
            "stored garbled"
        ) from None
    return text.lstrip("\ufeff")


def _as_utf8(text: str) -> bytes:
    # feedparser gets UTF-8 that says so: it has nothing left to guess.
    return _XML_DECL_TEXT.sub(r"\1utf-8\3", text, count=1).encode("utf-8")


def _refuse_entity_declaration(name: str, *_args: object) -> None:
    raise IngestError(
        f"feed declares the entity {name!r} in a DOCTYPE; refused: entity declarations are "
        "how billion-laughs and external-entity (XXE) attacks work, and feeds need none"
    )


def _check_xml(document: bytes) -> None:
    """Well-formed XML without entity declarations, or IngestError naming line, column and
    the text found there (feedparser's own errors count lines of a document it rewrote)."""
    parser = xml.parsers.expat.ParserCreate()
    parser.EntityDeclHandler = _refuse_entity_declaration
    try:
        parser.Parse(document, True)
    except xml.parsers.expat.ExpatError as exc:
        lines = document.decode("utf-8").splitlines() or [""]
        line = lines[min(exc.lineno, len(lines)) - 1]
        near = line[max(exc.offset - 10, 0):exc.offset + 30]
        raise IngestError(
            f"malformed feed: line {exc.lineno}, column {exc.offset + 1}: "
            f"{xml.parsers.expat.errors.messages[exc.code]}, near {near!r}"
        ) from None


# Dates outside these years are typing errors or placeholders; the item keeps no date.
_SANE_YEARS = range(1900, 3000)


def parse_feed(
    data: bytes,
    known_facets: Mapping[str, str] | None = None,
    *,
    http_charset: str | None = None,
) -> list[ItemIn]:
    """Items from an RSS 2.0 or Atom document (see ``read_feed``; rejected entries are
    left out)."""
    return read_feed(data, known_facets, http_charset=http_charset)[0]


def read_feed(
    data: bytes,
    known_facets: Mapping[str, str] | None = None,
    *,
    http_charset: str | None = None,
) -> tuple[list[ItemIn], list[str]]:
    """Items from an RSS 2.0 or Atom document (bytes, never a URL: fetch() reads URLs), and
    the reasons entries were rejected (an entry without a title; the others are kept).

    The bytes are decoded by ``decode_feed`` (``http_charset``: the charset the HTTP
    response declared). Each category goes to the facet its scheme/domain names; without a
    telling scheme, to the facet ``known_facets`` (slug -> facet, see
    taxonomy.known_facets) has for it; else it is a theme. An item has one content type:
    the first one wins.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("parse_feed takes the document's bytes; use fetch() for a URL")
    document = _as_utf8(decode_feed(data, http_charset))
    _check_xml(document)
    parsed = feedparser.parse(document)
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if problem is not None:
        raise IngestError(f"malformed feed: {type(problem).__name__}: {problem}")
    if not parsed.get("version"):
        raise IngestError("not an RSS or Atom feed: no <rss> or <feed> element found")

    known = known_facets or {}
    items = []
    rejected: list[str] = []
    for number, entry in enumerate(parsed.entries, 1):
        title = to_plain_text(entry.get("title"))
        summary = to_plain_text(entry.get("summary") or "")
        link = (entry.get("link") or "").strip()
        url = link if _is_web_url(link) else None  # no javascript: links in a digest
        if not title:  # a digest cannot show an item without a heading
            named = (entry.get("id") or link or "").strip()[:200]
            rejected.append(
                f"entry {number}{f' ({named!r})' if named else ''}: no title "
                f"(raw title {(entry.get('title') or '')[:80]!r}); skipped"
            )
            continue
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        published_at = (
            datetime(*stamp[:6], tzinfo=timezone.utc)
            if stamp and stamp[0] in _SANE_YEARS
            else None
        )

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
    return items, rejected


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


@dataclass
class Fetched:
    body: bytes
    content_type: str | None  # the response's Content-Type header, as sent

    @property
    def charset(self) -> str | None:
        return charset_of(self.content_type)


def fetch(url: str, timeout: float = 10, max_bytes: int = MAX_FETCH_BYTES) -> bytes:
    """The body at an http(s) URL, read up to ``max_bytes``; IngestError on any failure."""
    return fetch_document(url, timeout, max_bytes).body


def fetch_document(url: str, timeout: float = 10, max_bytes: int = MAX_FETCH_BYTES) -> Fetched:
    """The body and Content-Type at an http(s) URL (see ``fetch``)."""
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
                return Fetched(bytes(body), response.headers.get("content-type"))
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
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:  # never load a huge file to find out it is too big
            raise IngestError(
                f"cannot read {path}: it is {size} bytes, over the {MAX_FILE_BYTES}-byte limit; "
                "split it into smaller files"
            )
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
    # Read before any transaction; a file has no HTTP charset, only its BOM and declaration.
    fetched = fetch_document(source) if is_url else Fetched(_read(source, text=False), None)
    with session_scope() as session:
        items, rejected = read_feed(
            fetched.body, load_known_facets(session), http_charset=fetched.charset
        )
        report = store_items(
            session, items, source=f"feed:{source}", now=now, max_age_days=max_age_days
        )
    report.rejected = rejected
    return report


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
