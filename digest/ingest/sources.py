"""The entry points: read a file or fetch a URL, parse, and store in one transaction, so a
bad document writes nothing."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast, overload

from digest.db import session_scope
from digest.errors import IngestError
from digest.ingest.feeds import read_feed
from digest.ingest.fetch import MAX_FETCH_BYTES, Fetched, fetch_document
from digest.ingest.json_items import parse_json_items
from digest.ingest.listing import ListingDocument, read_listing_document
from digest.ingest.store import IngestReport, store_items
from digest.settings import Settings
from digest.taxonomy import known_facets as load_known_facets

MAX_FILE_BYTES = MAX_FETCH_BYTES  # listing, feed and JSON files read from disk


@overload
def _read(path: str | Path, *, text: Literal[True]) -> str: ...
@overload
def _read(path: str | Path, *, text: Literal[False]) -> bytes: ...


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
    source: str | Path, *, settings: Settings, now: datetime | None = None,
    max_age_days: int | None = None, backfill_pages: int = 0,
) -> IngestReport:
    """Read a listing (the newsroom's HTML page or the text form; a file, or an http(s) URL
    fetched) and store its items.

    With ``backfill_pages``, up to that many further pages are followed by the page's next
    link and stored as archive backfill (``is_backfill``: kept, never mailed): a first
    backfill of a newsroom's history. Every page is read before the transaction, so a page
    that cannot be read writes nothing. Each damaged item left out is a line of
    ``report.rejected``, naming its page and line.
    """
    if backfill_pages < 0:
        raise IngestError(f"--backfill-pages must be 0 or more, not {backfill_pages}")
    pages = _listing_pages(source, backfill_pages)
    label = source if _is_url(source) else Path(source).name
    warnings = [
        f"page {n} ({url}): {warning}" if len(pages) > 1 else warning
        for n, (url, page) in enumerate(pages, 1) for warning in page.warnings
    ]
    with session_scope(settings.database_url) as session:
        report = IngestReport()
        for n, (_, page) in enumerate(pages):
            _add_to(report, store_items(
                session, page.items, source=f"listing:{label}", now=now,
                max_age_days=_max_age(settings, max_age_days), backfill=n > 0,
                keep_complete=True,
            ))
    report.rejected = warnings + report.rejected
    return report


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and bool(re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I))


def _listing_pages(source: str | Path, backfill_pages: int
                   ) -> list[tuple[str, ListingDocument]]:
    """The listing's first page and up to ``backfill_pages`` next ones, each once."""
    if _is_url(source):
        pages = [_fetched_page(str(source))]
    else:
        body = _read(source, text=False)
        try:
            pages = [(str(source), read_listing_document(body))]
        except IngestError as exc:
            raise IngestError(f"cannot read {source}: {exc}") from None
    seen = {pages[0][0]}
    while len(pages) <= backfill_pages and (next_url := pages[-1][1].next_page_url):
        if next_url in seen:  # a pager that loops back: stop rather than read it again
            break
        seen.add(next_url)
        pages.append(_fetched_page(next_url))
    return pages


def _fetched_page(url: str) -> tuple[str, ListingDocument]:
    fetched = fetch_document(url)
    return url, read_listing_document(fetched.body, content_type=fetched.content_type,
                                      base_url=url)


def _add_to(report: IngestReport, page: IngestReport) -> None:
    report.new_item_ids += page.new_item_ids
    report.updated_item_ids += page.updated_item_ids
    report.unchanged_count += page.unchanged_count
    report.backfill_ids += page.backfill_ids
    report.duplicates_in_batch += page.duplicates_in_batch
    report.less_complete += page.less_complete
    report.rejected += page.rejected
    report.unfiled += page.unfiled
    for facet, names in page.created.items():
        report.created.setdefault(facet, []).extend(names)


def ingest_feed(
    source: str | Path, *, settings: Settings, now: datetime | None = None,
    max_age_days: int | None = None,
) -> IngestReport:
    """Fetch (http/https URL) or read (path) an RSS/Atom feed and store its items."""
    # Read before any transaction; a file has no HTTP charset, only its BOM and declaration.
    if isinstance(source, str) and re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I):
        fetched = fetch_document(source)
    else:
        fetched = Fetched(_read(source, text=False), None)
    with session_scope(settings.database_url) as session:
        items, rejected = read_feed(
            fetched.body, load_known_facets(session), http_charset=fetched.charset
        )
        report = store_items(
            session, items, source=f"feed:{source}", now=now,
            max_age_days=_max_age(settings, max_age_days), keep_complete=True,
        )
    report.rejected = rejected
    return report


def ingest_json(
    path_or_text: str | bytes | Path,
    *,
    settings: Settings,
    now: datetime | None = None,
    max_age_days: int | None = None,
) -> IngestReport:
    """Store items from JSON given as text/bytes (starting with '{' or '[') or a file path."""
    data: Any = path_or_text
    is_document = isinstance(data, (str, bytes)) and data.lstrip()[:1] in ("{", "[", b"{", b"[")
    if not is_document:
        # Bytes that are not a document are refused by Path, as before.
        data = _read(cast("str | Path", path_or_text), text=True)
    items = parse_json_items(data)
    with session_scope(settings.database_url) as session:
        return store_items(session, items, source="json", now=now,
                           max_age_days=_max_age(settings, max_age_days))


def _max_age(settings: Settings, max_age_days: int | None) -> int:
    # An explicit age (a test, a back-fill) beats the configured one.
    return settings.max_item_age_days if max_age_days is None else max_age_days
