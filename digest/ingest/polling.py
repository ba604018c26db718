"""Polling the registered sources politely (ADR 0034): the beat's ``poll_sources`` task,
``digest tick`` and ``digest sources poll`` all call ``poll_due``.

A poller claims one due source at a time with a lease (``lease_until``, ``lease_token``):
on PostgreSQL the candidate row is read ``FOR UPDATE SKIP LOCKED``, and on both databases
the claim is a conditional UPDATE that only one poller can win, so any number of beats and
workers never poll one source at once. The fetch runs outside any transaction; its outcome
(items stored, validators, health, the next poll) is one transaction per source, and a
source's error is caught and recorded in words, never stopping the others. New items are
announced through the task queue after that commit.

When next: a healthy source after ``max(its interval, Cache-Control max-age)``; a failing
one after its interval doubled per consecutive failure, capped by
``DIGEST_SOURCE_BACKOFF_MAX_SECONDS``; a ``Retry-After`` is a floor either way; and a little
jitter so sources added together do not stay in step.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from digest.db import rowcount, session_scope
from digest.errors import DigestError, IngestError, ValidationError
from digest.ingest import websub
from digest.ingest.documents import ParsedDocument, parse_document, store_parsed
from digest.ingest.fetch import SourceResponse, fetch_source
from digest.models import Source, SourceKind, utcnow
from digest.queue import BrokerQueue, TaskQueue
from digest.settings import Settings

log = logging.getLogger(__name__)

# Longer than any one source's fetch (its timeout times its backfill pages): a poller that
# died holding a source leaves it to the others after this.
LEASE = timedelta(minutes=10)
JITTER = 0.1  # up to a tenth of the wait added at random
MAX_RETRY_AFTER_SECONDS = 7 * 86400  # a server asking for more is read as a week
FETCH_TIMEOUT_SECONDS = 20.0

STORED, NOT_MODIFIED, FAILED, SKIPPED = "stored", "not_modified", "failed", "skipped"


@dataclass
class PollOutcome:
    source_id: int
    url: str
    status: str  # stored | not_modified | failed | skipped
    new_items: int = 0
    error: str | None = None
    next_poll_at: datetime | None = None


@dataclass
class _Polled(PollOutcome):
    """An outcome and the ids to announce once it is committed."""
    new_item_ids: tuple[int, ...] = ()


# --- When next (pure arithmetic; the clock is passed in). ------------------------------------


def healthy_wait(interval: int, max_age: int | None) -> int:
    """Seconds until a healthy source's next poll: its interval, or longer if the server said
    its answer stays fresh longer (``Cache-Control: max-age``)."""
    return max(interval, max_age or 0)


def backoff_wait(interval: int, failures: int, cap: int, retry_after: int | None = None) -> int:
    """Seconds until a failing source's next attempt: its interval doubled per consecutive
    failure after the first (``failures`` >= 1), at most ``cap``; never sooner than the
    server's ``Retry-After``."""
    doubled = interval * 2 ** min(max(failures - 1, 0), 32)
    wait = min(doubled, cap)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return wait


def next_poll(now: datetime, wait: int, rand: Callable[[], float] = random.random) -> datetime:
    """``now`` plus ``wait`` seconds plus up to ``JITTER`` of it at random (never less)."""
    return now + timedelta(seconds=wait * (1 + JITTER * rand()))


# --- Claiming. --------------------------------------------------------------------------------


def _claimable(now: datetime, all_sources: bool, source_ids: Sequence[int] | None,
               done: set[int]):
    conditions = [Source.paused.is_(False),
                  or_(Source.lease_until.is_(None), Source.lease_until <= now)]
    if not all_sources and source_ids is None:
        conditions.append(Source.next_poll_at <= now)
    if source_ids is not None:
        conditions.append(Source.id.in_(list(source_ids)))
    if done:
        conditions.append(Source.id.not_in(done))
    return conditions


def _claim_next(session: Session, *, now: datetime, token: str, all_sources: bool,
                source_ids: Sequence[int] | None, done: set[int]) -> int | None:
    """The id of the next source this poller holds (committed), or None: none left."""
    while True:
        query = (select(Source.id).where(*_claimable(now, all_sources, source_ids, done))
                 .order_by(Source.next_poll_at, Source.id).limit(1))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        source_id = session.scalar(query)
        if source_id is None:
            session.commit()
            return None
        # Only one poller's UPDATE matches: the others see the lease taken (SQLite has no
        # SKIP LOCKED; its writers are serialised, so the condition decides).
        won = rowcount(session, update(Source).where(
            Source.id == source_id, *_claimable(now, all_sources, source_ids, set()))
            .values(lease_until=now + LEASE, lease_token=token))
        session.commit()
        if won:
            return source_id
        done.add(source_id)  # taken by another poller meanwhile: not ours this pass


# --- Polling. ---------------------------------------------------------------------------------


def poll_due(settings: Settings, *, now: datetime | None = None, all_sources: bool = False,
             source_ids: Sequence[int] | None = None,
             queue: TaskQueue | None = None) -> list[PollOutcome]:
    """One polling pass: every due source (``all_sources``: every source not paused, due or
    not; ``source_ids``: those, due or not), each claimed, fetched and recorded on its own.
    A source another poller holds is left to it (``skipped`` when asked for by id). New
    items are announced through ``queue`` (default: the broker's, when one is configured;
    the beat's alerts task finds them otherwise)."""
    now = utcnow() if now is None else now
    if queue is None and settings.broker_url:
        queue = BrokerQueue(settings)
    token = uuid.uuid4().hex
    # A task is stopped at 0.8 of DIGEST_LEASE_SECONDS (workers.celery_app): claim no new
    # source past half of it; the rest stay due for the next pass (another worker's, maybe).
    stop_claiming = time.monotonic() + settings.lease_seconds / 2
    outcomes: list[PollOutcome] = []
    passed: set[int] = set()  # polled by this pass, or taken by another poller meanwhile
    polled: set[int] = set()
    while time.monotonic() < stop_claiming:
        with session_scope(settings.database_url) as session:
            source_id = _claim_next(session, now=now, token=token, all_sources=all_sources,
                                    source_ids=source_ids, done=passed)
        if source_id is None:
            break
        passed.add(source_id)
        polled.add(source_id)
        outcome = _poll_guarded(settings, source_id, token, now)
        outcomes.append(outcome)
        if outcome.new_item_ids and queue is not None:
            queue.publish_items(outcome.new_item_ids)
    if source_ids is not None:
        outcomes += _skipped(settings, [i for i in source_ids if i not in polled])
    return outcomes


def _poll_guarded(settings: Settings, source_id: int, token: str, now: datetime) -> _Polled:
    """``poll_one``, with any error the parsers did not foresee recorded as the source's (one
    bad source never stops the pass); a database that does not answer still stops it."""
    try:
        return poll_one(settings, source_id, token=token, now=now)
    except (SQLAlchemyError, KeyboardInterrupt):
        raise
    except Exception as exc:
        log.exception("source %s: unexpected error while polling", source_id)
        return _record_failure(settings, source_id, token, now,
                               f"unexpected error: {type(exc).__name__}: {exc}")


def _skipped(settings: Settings, ids: list[int]) -> list[PollOutcome]:
    if not ids:
        return []
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Source.id, Source.url, Source.paused, Source.next_poll_at)
                               .where(Source.id.in_(ids))).all()
    return [PollOutcome(row.id, row.url, SKIPPED, next_poll_at=row.next_poll_at,
                        error="paused" if row.paused else "being polled by another poller")
            for row in rows]


def poll_one(settings: Settings, source_id: int, *, token: str, now: datetime) -> _Polled:
    """Fetch one claimed source and record what happened; errors become its ``last_error``."""
    with session_scope(settings.database_url) as session:
        source = session.get_one(Source, source_id)
        url, etag, last_modified = source.url, source.etag, source.last_modified
    try:
        response = fetch_source(url, etag=etag, last_modified=last_modified,
                                allow_private=settings.sources_allow_private,
                                max_bytes=settings.source_max_bytes,
                                timeout=FETCH_TIMEOUT_SECONDS, now=now)
    except DigestError as exc:
        return _record_failure(settings, source_id, token, now, str(exc))
    if response.status == 304:
        return _record_not_modified(settings, source_id, token, now, response)
    if response.status != 200:
        return _record_failure(settings, source_id, token, now, _status_words(url, response),
                               response)
    for attempt in (1, 2):
        try:
            return _record_stored(settings, source_id, token, now, response)
        except DigestError as exc:
            return _record_failure(settings, source_id, token, now, str(exc), response)
        except IntegrityError:
            # Another source, a push or an ingest stored one of these items at the same
            # moment (a newsroom read through two sources): its transaction rolled back, and
            # the second try finds the item stored and updates it.
            if attempt == 2:
                raise
            log.info("source %s: an item was stored by another writer meanwhile; storing "
                     "again", source_id)
    raise AssertionError("unreachable")


def _status_words(url: str, response: SourceResponse) -> str:
    words = f"{url} answered HTTP {response.status}"
    if response.status == 429:
        words += " (too many requests)"
    elif response.status == 503:
        words += " (service unavailable)"
    if response.retry_after is not None:
        words += f"; it asked us to wait {response.retry_after} s (Retry-After)"
    return words


def _attempted(source: Source, now: datetime, token: str, response: SourceResponse | None
               ) -> None:
    source.last_attempt_at = now
    source.polls += 1
    if response is not None:
        source.last_status = response.status
        source.bytes_fetched += response.size
    if source.lease_token == token:
        source.lease_until = source.lease_token = None


def _healthy(source: Source, now: datetime, response: SourceResponse) -> None:
    source.last_success_at = now
    source.last_error = None
    source.failing_since = None
    source.consecutive_failures = 0
    wait = healthy_wait(websub.poll_every(source, now=now), response.max_age)
    if response.retry_after is not None:
        wait = max(wait, min(response.retry_after, MAX_RETRY_AFTER_SECONDS))
    source.next_poll_at = next_poll(now, wait)


def _record_not_modified(settings: Settings, source_id: int, token: str, now: datetime,
                         response: SourceResponse) -> _Polled:
    with session_scope(settings.database_url) as session:
        source = session.get_one(Source, source_id)
        _attempted(source, now, token, response)
        source.not_modified += 1
        _healthy(source, now, response)
        return _Polled(source.id, source.url, NOT_MODIFIED, next_poll_at=source.next_poll_at)


def _record_failure(settings: Settings, source_id: int, token: str, now: datetime, error: str,
                    response: SourceResponse | None = None) -> _Polled:
    log.warning("source %s failed: %s", source_id, error)
    with session_scope(settings.database_url) as session:
        source = session.get_one(Source, source_id)
        _attempted(source, now, token, response)
        source.failures += 1
        source.consecutive_failures += 1
        source.failing_since = source.failing_since or now
        source.last_error = error
        wait = backoff_wait(source.every_seconds, source.consecutive_failures,
                            settings.source_backoff_max_seconds,
                            response.retry_after if response is not None else None)
        source.next_poll_at = next_poll(now, wait)
        return _Polled(source.id, source.url, FAILED, error=error,
                       next_poll_at=source.next_poll_at)


def _record_stored(settings: Settings, source_id: int, token: str, now: datetime,
                   response: SourceResponse) -> _Polled:
    """Store a 200's items and the source's new state in one transaction; then, on a listing's
    first success, its backfill pages."""
    with session_scope(settings.database_url) as session:
        source = session.get_one(Source, source_id)
        first_success = source.last_success_at is None
        if response.moved_permanently:
            _move(session, source, response.final_url)
        parsed = parse_document(session, source, response.body, response.content_type)
        report = store_parsed(session, source, parsed, settings=settings, now=now)
        _attempted(source, now, token, response)
        source.etag, source.last_modified = response.etag, response.last_modified
        source.items_added += len(report.new_item_ids)
        if source.kind is SourceKind.feed:
            found = websub.discover(response.body, response.headers, source.url)
            if found is not None and found != (source.hub_url, source.topic_url):
                # A new hub or topic: the next WebSub pass subscribes afresh.
                source.hub_url, source.topic_url = found
                source.websub_state = None
        _healthy(source, now, response)
        outcome = _Polled(source.id, source.url, STORED, new_items=len(report.new_item_ids),
                          next_poll_at=source.next_poll_at,
                          new_item_ids=tuple(report.new_item_ids))
        backfill = (source.kind is SourceKind.listing and first_success
                    and source.backfill_pages > 0 and parsed.next_page_url)
        pages = source.backfill_pages
    if backfill and parsed.next_page_url:
        outcome.new_items += _backfill(settings, source_id, parsed.next_page_url, pages, now)
    return outcome


def _move(session: Session, source: Source, final_url: str) -> None:
    """A 301/308 moved the source: keep the new address, unless another source has it."""
    taken = session.scalar(select(Source.id).where(Source.url == final_url,
                                                   Source.id != source.id))
    if taken is None:
        log.info("source %s moved permanently to %s", source.id, final_url)
        source.url = final_url


def _backfill(settings: Settings, source_id: int, url: str | None, pages: int,
              now: datetime) -> int:
    """Up to ``pages`` more listing pages after the first, stored as archive backfill (never
    mailed), one transaction a page; a page that fails ends the backfill (logged)."""
    stored = 0
    seen: set[str] = set()
    while url and pages > 0 and url not in seen:
        seen.add(url)
        pages -= 1
        try:
            response = fetch_source(url, allow_private=settings.sources_allow_private,
                                    max_bytes=settings.source_max_bytes,
                                    timeout=FETCH_TIMEOUT_SECONDS, now=now)
            if response.status != 200:
                raise DigestError(f"{url} answered HTTP {response.status}")
            with session_scope(settings.database_url) as session:
                source = session.get_one(Source, source_id)
                parsed = parse_document(session, source, response.body, response.content_type)
                report = store_parsed(session, source, parsed, settings=settings, now=now,
                                      backfill=True)
                source.items_added += len(report.new_item_ids)
                source.bytes_fetched += response.size
                stored += len(report.new_item_ids)
                url = parsed.next_page_url
        except DigestError as exc:
            log.warning("source %s: backfill stopped at %s: %s", source_id, url, exc)
            break
    return stored


# --- A dry fetch (``digest sources check``). -------------------------------------------------


@dataclass
class SourceCheck:
    """What polling ``url`` now would store, found without storing anything."""
    url: str
    kind: SourceKind
    response: SourceResponse
    parsed: ParsedDocument
    hub: tuple[str, str] | None  # the WebSub (hub, topic) a feed advertises
    registered: bool  # the URL is a registered source (its kind and defaults were used)


def check_source(settings: Settings, url: str, *, kind: str | SourceKind | None = None,
                 now: datetime | None = None) -> SourceCheck:
    """Fetch ``url`` once (no validators: the whole document) and parse it as a registered
    source of that URL would be, or as ``kind`` (default feed): nothing is written. IngestError
    when the fetch fails, is refused or answers other than 200, or the document is
    unreadable."""
    now = utcnow() if now is None else now
    url = url.strip()
    response = fetch_source(url, allow_private=settings.sources_allow_private,
                            max_bytes=settings.source_max_bytes,
                            timeout=FETCH_TIMEOUT_SECONDS, now=now)
    if response.status != 200:
        raise IngestError(_status_words(url, response))
    with session_scope(settings.database_url) as session:
        registered = session.scalar(select(Source).where(Source.url == url))
        source = _stand_in(registered, response.final_url, kind)
        parsed = parse_document(session, source, response.body, response.content_type)
        session.rollback()  # nothing of a check is kept
    hub = (websub.discover(response.body, response.headers, url)
           if source.kind is SourceKind.feed else None)
    return SourceCheck(url, source.kind, response, parsed, hub, registered is not None)


def _stand_in(registered: Source | None, url: str, kind: str | SourceKind | None) -> Source:
    """A Source never added to a session: the registered one's defaults (if any), the kind
    asked for (else the registered one's, else a feed)."""
    if kind is None:
        kind = registered.kind if registered is not None else SourceKind.feed
    try:
        chosen = SourceKind(str(kind).lower())
    except ValueError:
        raise ValidationError(f"unknown source kind {kind!r}; use one of: "
                              f"{', '.join(k.value for k in SourceKind)}") from None
    if registered is None:
        return Source(url=url, kind=chosen)
    return Source(url=registered.url, kind=chosen,
                  default_content_type=registered.default_content_type,
                  default_location=registered.default_location,
                  default_language=registered.default_language)
