"""One fetched document of a registered source, parsed by the source's kind and stored with
the source's defaults: the one path a poll, a WebSub push and ``sources check`` share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy.orm import Session

from digest.ingest.decode import charset_of
from digest.ingest.feeds import read_feed
from digest.ingest.json_items import parse_json_items
from digest.ingest.listing import read_listing_document
from digest.ingest.parsed import ItemIn
from digest.ingest.store import IngestReport, store_items
from digest.models import Source, SourceKind
from digest.settings import Settings
from digest.taxonomy import known_facets


@dataclass
class ParsedDocument:
    items: list[ItemIn]
    warnings: list[str] = field(default_factory=list)  # entries left out, with the reason
    next_page_url: str | None = None  # a listing page's next page


def parse_document(session: Session, source: Source, body: bytes,
                   content_type: str | None) -> ParsedDocument:
    """The items of ``body`` read as ``source.kind``, each given the source's defaults where
    it carries none. IngestError when the document cannot be read at all."""
    if source.kind is SourceKind.feed:
        items, rejected = read_feed(body, known_facets(session),
                                    http_charset=charset_of(content_type))
        parsed = ParsedDocument(items, rejected)
    elif source.kind is SourceKind.listing:
        page = read_listing_document(body, content_type=content_type, base_url=source.url)
        parsed = ParsedDocument(page.items, page.warnings, page.next_page_url)
    else:
        parsed = ParsedDocument(parse_json_items(bytes(body)))
    parsed.items = [_with_defaults(item, source) for item in parsed.items]
    return parsed


def _with_defaults(item: ItemIn, source: Source) -> ItemIn:
    return replace(
        item,
        content_type=item.content_type or source.default_content_type,
        locations=item.locations or ([source.default_location] if source.default_location
                                     else []),
        language=item.language or source.default_language,
    )


def store_document(session: Session, source: Source, body: bytes, content_type: str | None, *,
                   settings: Settings, now: datetime, backfill: bool = False) -> IngestReport:
    """Parse and store one document of ``source`` (flushes; the caller commits, then
    announces ``report.new_item_ids``)."""
    return store_parsed(session, source, parse_document(session, source, body, content_type),
                        settings=settings, now=now, backfill=backfill)


def store_parsed(session: Session, source: Source, parsed: ParsedDocument, *,
                 settings: Settings, now: datetime, backfill: bool = False) -> IngestReport:
    """Store a document ``parse_document`` read (a poller keeps its ``next_page_url``)."""
    report = store_items(session, parsed.items, source=f"{source.kind.value}:{source.url}",
                         now=now, max_age_days=settings.max_item_age_days,
                         source_id=source.id, backfill=backfill,
                         # A page or feed may come cut short; JSON states its items.
                         keep_complete=source.kind is not SourceKind.json)
    report.rejected = parsed.warnings + report.rejected
    return report
