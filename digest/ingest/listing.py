"""The newsroom's listing, in either form: its HTML page (``listing_html``) or the text form
(a title line, ``Publishing date: D Month YYYY``, optional field lines, then the summary).

Read defensively: a page copied or fetched in part ends in a damaged item, and one damaged
item never costs the page its good ones. Each item stands alone: a damaged one is left out
with a warning naming its line, a field line the page ends inside is left out (it would
create a cut taxonomy name), and only a page where no item at all can be read is refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from digest.errors import IngestError
from digest.ingest.parsed import (
    ItemIn,
    is_web_url,
    split_names,
    title_date_guid,
    to_plain_text,
)

log = logging.getLogger(__name__)

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
_LABELS = ("publishing date:", "content type:", "where we are:", "what we do:", "url:")
FIELD_LABELS = ("content type", "where we are", "what we do")
_DATE_FORMAT = "write it as 'D Month YYYY', e.g. '9 October 2025'"


@dataclass
class ListingDocument:
    """What one listing page gave: its items, a warning per damaged item left out (naming its
    line), and the next page's address when the page links one (pagination)."""

    items: list[ItemIn]
    warnings: list[str] = field(default_factory=list)
    next_page_url: str | None = None


class DamagedItem(ValueError):  # noqa: N818 - a reason, caught per item, never raised out
    """Why one item is left out; its message names the line."""


def listing_date(value: str, lineno: int) -> datetime | None:
    """``D Month YYYY`` as UTC midnight; None for an empty value; DamagedItem otherwise."""
    value = value.strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d{1,2})\s+([A-Za-z]+)\.?\s+(\d{4})", value)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if match and month:
        try:
            return datetime(int(match.group(3)), month, int(match.group(1)), tzinfo=UTC)
        except ValueError:
            pass
    raise DamagedItem(f"line {lineno}: invalid publishing date {value!r}; {_DATE_FORMAT}")


def listing_item(*, title: str, published_at: datetime | None, url: str | None,
                 fields: dict[str, str], summary: str) -> ItemIn:
    """One listing item, the same from either form. Its key is its title and date even when
    its link is known, so the text form (often without links) and the HTML page (with them)
    name the same item the same way; the store also matches it by URL."""
    content_type = split_names(fields.get("content type", ""))
    return ItemIn(
        guid=title_date_guid(title, published_at),
        url=url,
        title=title,
        summary=summary,
        published_at=published_at,
        content_type=content_type[0] if content_type else None,
        themes=split_names(fields.get("what we do", "")),
        locations=split_names(fields.get("where we are", "")),
    )


def no_items_error(form: str, warnings: list[str], shape: str) -> IngestError:
    if warnings:
        shown = "; ".join(warnings[:5]) + ("; ..." if len(warnings) > 5 else "")
        return IngestError(f"no item of the {form} could be read: {shown}")
    return IngestError(f"no items found in the {form}: {shape}")


_TEXT_SHAPE = "an item is a title line followed by 'Publishing date: D Month YYYY'"


def read_listing_text(text: str) -> ListingDocument:
    """Items of the text form, each read on its own.

    An item starts with a title line followed by ``Publishing date: D Month YYYY``; then come
    optional ``Content type:``, ``Where we are:``, ``What we do:`` (comma-separated) and
    ``URL:`` lines, then summary lines up to the next title. Lines before the first title
    (the page header) are skipped. A page that does not end with a line break may have been
    cut inside its last line: that line is trusted only where it can be checked (a date).
    """
    text = text.lstrip("\ufeff")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    cut_lineno = lines[-1][0] if lines and not text.endswith(("\n", "\r")) else None
    warnings: list[str] = []
    if cut_lineno is not None and _is_cut_label(lines[-1][1]):
        cut_label = lines.pop()[1]
        warnings.append(f"line {cut_lineno}: the page ends inside a field label "
                        f"({cut_label!r}); left out")
        cut_lineno = None
        if "publishing date:".startswith(cut_label.lower()) and lines and not (
                _DATE_LINE.match(lines[-1][1]) or _FIELD_LINE.match(lines[-1][1])):
            lineno, title = lines.pop()  # its date label was cut: a title without a date
            warnings.append(f"line {lineno}: item {title[:80]!r} has no publishing date "
                            "(the page ends inside its date label); left out")
    starts = [
        i
        for i in range(len(lines) - 1)
        if _DATE_LINE.match(lines[i + 1][1])
        and not _DATE_LINE.match(lines[i][1])
        and not _FIELD_LINE.match(lines[i][1])
    ]
    blocks = [lines[start:(starts[k + 1] if k + 1 < len(starts) else len(lines))]
              for k, start in enumerate(starts)]
    if blocks:
        blocks[-1] = _without_trailing_title(blocks, warnings)

    items = []
    for block in blocks:
        try:
            items.append(_text_item(block, cut_lineno, warnings))
        except DamagedItem as damaged:
            warnings.append(f"{damaged}; item {block[0][1][:80]!r} left out")
    return ListingDocument(items, warnings)


def _is_cut_label(line: str) -> bool:
    lowered = line.lower()
    return len(lowered) >= 2 and any(
        label.startswith(lowered) and lowered != label for label in _LABELS
    )


def _summary_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    pos = 2
    while pos < len(block) and _FIELD_LINE.match(block[pos][1]):
        pos += 1
    return block[pos:]


def _without_trailing_title(blocks: list[list[tuple[int, str]]],
                            warnings: list[str]) -> list[tuple[int, str]]:
    """The last item's lines, without a title the page was cut after (its date missing).

    In the newsroom's form a summary is one paragraph, one line. When every other item of
    the page keeps to that and the last item has more lines, the extra lines are the next
    item's title cut from its date, not summary: left out with a warning. A page whose
    summaries span lines (the demo's) cannot tell the two apart and keeps them as summary.
    """
    last = blocks[-1]
    summary = _summary_lines(last)
    others = [len(_summary_lines(block)) for block in blocks[:-1]]
    if len(summary) < 2 or not others or max(others) != 1:
        return last
    lineno, title = summary[1]
    warnings.append(f"line {lineno}: item {title[:80]!r} has no publishing date (the page "
                    "ends after its title); left out")
    return last[:len(last) - len(summary) + 1]


def _text_item(block: list[tuple[int, str]], cut_lineno: int | None,
               warnings: list[str]) -> ItemIn:
    title_lineno, raw_title = block[0]
    title = to_plain_text(raw_title)
    if not title:
        raise DamagedItem(f"line {title_lineno}: the title is empty once its markup is removed")
    date_lineno, date_line = block[1]
    date_match = _DATE_LINE.match(date_line)
    assert date_match is not None  # a block starts with a title line and a date line
    try:
        published_at = listing_date(date_match.group(1), date_lineno)
    except DamagedItem:
        if date_lineno == cut_lineno:
            raise DamagedItem(f"line {date_lineno}: the page ends inside the publishing "
                              f"date {date_match.group(1).strip()!r}") from None
        raise

    fields: dict[str, str] = {}
    pos = 2
    while pos < len(block) and (match := _FIELD_LINE.match(block[pos][1])):
        lineno, (key, value) = block[pos][0], (match.group(1).lower(), match.group(2).strip())
        pos += 1
        if lineno == cut_lineno:
            # The page ends inside this line: "Content type: P" would create a type "P".
            warnings.append(f"line {lineno}: the page ends inside the {key!r} line "
                            f"({value!r}); that field of item {title[:80]!r} is left out")
            continue
        if key == "url" and value and not is_web_url(value):
            raise DamagedItem(f"line {lineno}: URL {value!r} is not an http(s) address")
        fields[key] = f"{fields[key]}, {value}" if key in fields and key != "url" else value
    summary = to_plain_text(" ".join(line for _, line in block[pos:]))
    return listing_item(title=title, published_at=published_at,
                        url=fields.get("url") or None, fields=fields, summary=summary)


def parse_listing(text: str) -> list[ItemIn]:
    """Items from the listing's text form; damaged items are left out (and logged).

    IngestError when no item at all can be read, naming why.
    """
    document = read_listing_text(text)
    if not document.items:
        raise no_items_error("listing", document.warnings, _TEXT_SHAPE)
    for warning in document.warnings:
        log.warning("listing: %s", warning)
    return document.items


def looks_like_html(body: bytes, content_type: str | None) -> bool:
    """The HTML page rather than the text form: by its Content-Type, else by its start."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        return True
    if kind == "text/plain":
        return False
    start = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--"))


def read_listing_document(body: bytes, *, content_type: str | None = None,
                          base_url: str | None = None) -> ListingDocument:
    """A listing page in either form: the newsroom's HTML page or the seed's text form.

    IngestError when the page cannot be decoded or no item of it can be read; otherwise its
    items and a warning per damaged item left out.
    """
    if looks_like_html(body, content_type):
        from digest.ingest.listing_html import read_listing_html

        return read_listing_html(body, content_type=content_type, base_url=base_url)
    from digest.ingest.decode import decode_page

    document = read_listing_text(decode_page(body, content_type, what="listing"))
    if not document.items:
        raise no_items_error("listing", document.warnings, _TEXT_SHAPE)
    return document
