"""What every parser shares: the parsed item (``ItemIn``), plain-text cleaning with nh3,
names, and the GUID an item gets when its document gives it none."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nh3

from digest.taxonomy import clean_name, slugify

_GUID_MAX = 1000  # items.guid column width


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
    language: str | None = None  # BCP 47 tag ("en", "fr"), lower-case
    # Categories whose facet nothing told (a feed's, without a domain, known in no facet or
    # in several): (name, why). Not stored; the ingest reports them.
    unfiled: list[tuple[str, str]] = field(default_factory=list)


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


def clean_names(values: Iterable[str | None] | None) -> list[str]:
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


def split_names(value: str) -> list[str]:
    return clean_names(value.split(","))


def is_web_url(url: str) -> bool:
    return url.lower().startswith(("http://", "https://")) and len(url) > len("https://")


def _hash_guid(*parts: str) -> str:
    digest = hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()
    return f"urn:digest:{digest[:40]}"


def title_date_guid(title: str, published_at: datetime | None) -> str:
    normalised = " ".join(title.casefold().split())
    return _hash_guid(normalised, published_at.date().isoformat() if published_at else "")


def bounded_guid(guid: str) -> str:
    return guid if len(guid) <= _GUID_MAX else _hash_guid(guid)


def as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:  # no zone given: the newsroom's dates are UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
