"""RSS 2.0 and Atom: our own strict decoding and XML check, then feedparser on the bytes."""

from __future__ import annotations

import xml.parsers.expat
from collections.abc import Mapping
from datetime import UTC, datetime

import feedparser

from digest.errors import IngestError
from digest.ingest.decode import as_utf8, decode_feed
from digest.ingest.parsed import (
    ItemIn,
    bounded_guid,
    clean_names,
    is_web_url,
    title_date_guid,
    to_plain_text,
)
from digest.taxonomy import FACETS, clean_name, slugify

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
    known_facets: Mapping[str, str | None] | None = None,
    *,
    http_charset: str | None = None,
) -> list[ItemIn]:
    """Items from an RSS 2.0 or Atom document (see ``read_feed``; rejected entries are
    left out)."""
    return read_feed(data, known_facets, http_charset=http_charset)[0]


def read_feed(
    data: bytes,
    known_facets: Mapping[str, str | None] | None = None,
    *,
    http_charset: str | None = None,
) -> tuple[list[ItemIn], list[str]]:
    """Items from an RSS 2.0 or Atom document (bytes, never a URL: fetch() reads URLs), and
    the reasons entries were rejected (an entry without a title; the others are kept).

    The bytes are decoded by ``decode_feed`` (``http_charset``: the charset the HTTP
    response declared). Each category goes to the facet its scheme/domain names; without a
    telling scheme, to the facet ``known_facets`` (slug -> facet, None when known in
    several; see taxonomy.known_facets) has for it; else it is left unfiled and named in the
    item's ``unfiled``. An item has one content type: the first one wins.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("parse_feed takes the document's bytes; use fetch() for a URL")
    document = as_utf8(decode_feed(data, http_charset))
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
        url = link if is_web_url(link) else None  # no javascript: links in a digest
        if not title:  # a digest cannot show an item without a heading
            named = (entry.get("id") or link or "").strip()[:200]
            rejected.append(
                f"entry {number}{f' ({named!r})' if named else ''}: no title "
                f"(raw title {(entry.get('title') or '')[:80]!r}); skipped"
            )
            continue
        # A time.struct_time (UTC); its first six fields are year to second.
        stamp: tuple[int, ...] | None = (
            entry.get("published_parsed") or entry.get("updated_parsed"))
        published_at = None
        if stamp and stamp[0] in _SANE_YEARS:
            year, month, day, hour, minute, second = stamp[:6]
            published_at = datetime(year, month, day, hour, minute, second, tzinfo=UTC)

        facets, unfiled = _file_categories(entry.get("tags") or [], known)
        content_types = clean_names(facets["content_type"])

        guid = (entry.get("id") or "").strip() or url or title_date_guid(title, published_at)
        items.append(
            ItemIn(
                guid=bounded_guid(guid),
                url=url,
                title=title,
                summary=summary,
                published_at=published_at,
                content_type=content_types[0] if content_types else None,
                themes=clean_names(facets["theme"]),
                locations=clean_names(facets["location"]),
                unfiled=unfiled,
            )
        )
    return items, rejected


def _file_categories(tags: list[Mapping[str, str]], known: Mapping[str, str | None],
                     ) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Each category to its facet: the one its scheme/domain names; without a telling one,
    the one facet its name is known in (``known``). A name known in no facet, or in several,
    is left unfiled, with why: never made a theme by default, or offices and content types
    would be filed as themes and location and type filters would miss the item."""
    facets: dict[str, list[str]] = {facet: [] for facet in FACETS}
    unfiled: list[tuple[str, str]] = []
    for tag in tags:
        name = clean_name(to_plain_text(tag.get("label") or tag.get("term") or ""))
        if not name:
            continue
        facet = _facet_of_scheme(tag.get("scheme")) or known.get(slugify(name))
        if facet is not None:
            facets[facet].append(name)
        elif slugify(name) in known:
            unfiled.append((name, "is known as more than one of theme, location, content type"))
        else:
            unfiled.append((name, "is not a known theme, location or content type"))
    return facets, unfiled
