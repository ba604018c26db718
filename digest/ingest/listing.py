"""The newsroom's listing text: a title line, ``Publishing date: D Month YYYY``, optional
field lines, then the summary."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from digest.errors import IngestError
from digest.ingest.parsed import (
    ItemIn,
    bounded_guid,
    is_web_url,
    split_names,
    title_date_guid,
    to_plain_text,
)

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
            return datetime(int(match.group(3)), month, int(match.group(1)), tzinfo=UTC)
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
        date_match = _DATE_LINE.match(date_line)
        assert date_match is not None  # a start is a line followed by a date line
        published_at = _listing_date(date_match.group(1), date_lineno)

        meta: dict[str, str] = {}
        pos = start + 2
        while pos < end and (match := _FIELD_LINE.match(lines[pos][1])):
            key, value = match.group(1).lower(), match.group(2).strip()
            if key == "url" and value and not is_web_url(value):
                raise IngestError(
                    f"line {lines[pos][0]}: URL {value!r} is not an http(s) address"
                )
            meta[key] = f"{meta[key]}, {value}" if key in meta and key != "url" else value
            pos += 1
        summary = to_plain_text(" ".join(line for _, line in lines[pos:end]))

        url = meta.get("url") or None
        content_type = split_names(meta.get("content type", ""))
        items.append(
            ItemIn(
                guid=bounded_guid(url) if url else title_date_guid(title, published_at),
                url=url,
                title=title,
                summary=summary,
                published_at=published_at,
                content_type=content_type[0] if content_type else None,
                themes=split_names(meta.get("what we do", "")),
                locations=split_names(meta.get("where we are", "")),
            )
        )
    return items


@dataclass
class ListingDocument:
    """What one listing page gave: its items, a warning per damaged item left out (naming its
    line), and the next page's address when the page links one (pagination)."""

    items: list[ItemIn]
    warnings: list[str] = field(default_factory=list)
    next_page_url: str | None = None


def read_listing_document(body: bytes, *, content_type: str | None = None,
                          base_url: str | None = None) -> ListingDocument:
    """A listing page in either form: the newsroom's HTML page or the seed's text form."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"the listing is not UTF-8 text (byte {exc.start})") from None
    return ListingDocument(parse_listing(text))
