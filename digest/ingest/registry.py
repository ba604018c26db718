"""The registered sources: adding, finding, pausing and removing them (the use-cases every
edge calls: CLI, API, admin). Polling them is ``ingest.polling``'s; their health words are
here so every edge says the same thing."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import NotFoundError, ValidationError
from digest.ingest.guard import check_public
from digest.ingest.parsed import is_web_url
from digest.models import Source, SourceKind, utcnow
from digest.settings import Settings

_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL_SECONDS = 60  # never hammer a newsroom: at most a request a minute per source
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def parse_interval(text: str | int) -> int:
    """Seconds from ``15m``, ``1h``, ``2d``, ``90s`` or a bare number of seconds."""
    match = _INTERVAL.match(str(text))
    if not match:
        raise ValidationError(f"invalid interval {text!r}; write it as e.g. 15m, 1h or 1d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds < MIN_INTERVAL_SECONDS:
        raise ValidationError(f"interval {text!r} is under a minute; poll a source at most once "
                              "a minute (its server is not ours)")
    return seconds


def format_interval(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def add_source(
    session: Session, url: str, *, settings: Settings, kind: str | SourceKind = SourceKind.feed,
    every: str | int = "15m", content_type: str | None = None, location: str | None = None,
    language: str | None = None, backfill_pages: int = 0, now: datetime | None = None,
) -> Source:
    """Register a source, due at once. ValidationError for a URL that is not http(s), one
    already registered, a private address (unless allowed), a bad kind, interval or language."""
    url = url.strip()
    if not is_web_url(url) or any(c in url for c in "\r\n\t "):
        raise ValidationError(f"{url!r} is not an http:// or https:// address")
    try:
        kind = SourceKind(str(kind).lower())
    except ValueError:
        raise ValidationError(f"unknown source kind {kind!r}; use one of: "
                              f"{', '.join(k.value for k in SourceKind)}") from None
    if language is not None and not _LANGUAGE.match(language):
        raise ValidationError(f"invalid language {language!r}; give a tag such as en, fr or "
                              "pt-BR")
    if backfill_pages < 0 or backfill_pages > 1000:
        raise ValidationError("backfill pages must be between 0 and 1000")
    existing = session.scalar(select(Source).where(Source.url == url))
    if existing is not None:
        raise ValidationError(f"{url} is already registered as source {existing.id}")
    check_public(url, allow_private=settings.sources_allow_private)
    now = utcnow() if now is None else now
    source = Source(
        url=url, kind=kind, every_seconds=parse_interval(every),
        default_content_type=(content_type or "").strip() or None,
        default_location=(location or "").strip() or None,
        default_language=language.lower() if language else None,
        backfill_pages=backfill_pages, paused=False, created_at=now, next_poll_at=now,
        consecutive_failures=0, polls=0, not_modified=0, failures=0, items_added=0,
        bytes_fetched=0,
    )
    session.add(source)
    session.flush()
    return source


def get_source(session: Session, ref: int | str) -> Source:
    """A source by id or by URL; NotFoundError says how to list them."""
    text = str(ref).strip()
    query = (select(Source).where(Source.id == int(text)) if text.isdigit()
             else select(Source).where(Source.url == text))
    source = session.scalar(query)
    if source is None:
        raise NotFoundError(f"no source {text!r}; 'digest sources list' shows them")
    return source


def list_sources(session: Session) -> list[Source]:
    return list(session.scalars(select(Source).order_by(Source.id)))


def set_paused(session: Session, ref: int | str, paused: bool,
               now: datetime | None = None) -> Source:
    """Pause (never polled) or resume (due at once) a source."""
    source = get_source(session, ref)
    source.paused = paused
    if not paused:
        source.next_poll_at = utcnow() if now is None else now
    return source


def remove_source(session: Session, ref: int | str) -> Source:
    """Forget a source; its items stay (their ``source_id`` is cleared)."""
    source = get_source(session, ref)
    session.delete(source)
    session.flush()
    return source


def health(source: Source, *, now: datetime, stale_hours: float) -> str:
    """One word every edge shows: ``paused``, ``new`` (never polled), ``ok``, ``failing``
    (its last attempt failed), ``stale`` (failing for ``DIGEST_SOURCE_STALE_HOURS``: red)."""
    if source.paused:
        return "paused"
    if source.last_attempt_at is None:
        return "new"
    if not source.consecutive_failures:
        return "ok"
    since = source.failing_since or source.last_attempt_at
    return "stale" if now - since >= timedelta(hours=stale_hours) else "failing"
