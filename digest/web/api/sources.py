"""Sources over the API: register, list with their health, pause, resume, poll now, remove.

Every change goes through ``digest.ingest.registry`` (and a poll through
``digest.ingest.polling``), so the API refuses exactly what the CLI and the admin refuse: a
URL that is not http(s), one already registered, a private address, a bad interval (422),
an unknown id (404)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from digest.ingest import polling, registry
from digest.models import Source, SourceKind, utcnow
from digest.settings import Settings
from digest.web.api.schemas import IdPath, _no_nul
from digest.web.deps import SessionDep, SettingsDep

router = APIRouter()

Health = Literal["new", "ok", "failing", "stale", "paused"]
PollStatus = Literal["stored", "not_modified", "failed", "skipped"]
Text300 = Annotated[str, Field(max_length=300), AfterValidator(_no_nul)]


class SourceIn(BaseModel):
    """A source to poll: its URL, how to read it, how often, and the defaults its items get."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_no_nul)]
    kind: SourceKind = SourceKind.feed
    every: Annotated[str, Field(min_length=1, max_length=20), AfterValidator(_no_nul)] = Field(
        "15m", description="How often to poll: 15m, 1h, 1d or seconds; at least a minute")
    content_type: Text300 | None = Field(None, description="Given to items that carry none")
    location: Text300 | None = Field(None, description="Given to items that carry none")
    language: Annotated[str, Field(max_length=16), AfterValidator(_no_nul)] | None = Field(
        None, description="A language tag (en, fr, pt-BR) given to items that carry none")
    backfill_pages: int = Field(0, ge=0, le=1000,
                                description="Listing pages to read on the first poll")


class WebSubOut(BaseModel):
    """The hub the feed advertises and our subscription to it (W3C WebSub)."""

    hub_url: str | None
    topic_url: str | None
    state: str | None
    lease_until: datetime | None
    last_push_at: datetime | None
    error: str | None


class SourceOut(BaseModel):
    id: int
    url: str
    kind: str
    every: str = Field(description="The polling interval, as 15m, 1h or 1d")
    every_seconds: int
    content_type: str | None
    location: str | None
    language: str | None
    backfill_pages: int
    paused: bool
    health: Health = Field(description="new: never polled; ok; failing: its last poll failed; "
                                       "stale: failing for DIGEST_SOURCE_STALE_HOURS; paused")
    created_at: datetime
    next_poll_at: datetime | None = Field(description="None while paused")
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_status: int | None = Field(description="HTTP status of the last answer")
    last_error: str | None = Field(description="Why the last poll failed, in words")
    failing_since: datetime | None
    consecutive_failures: int
    polls: int
    not_modified: int = Field(description="Polls answered 304 Not Modified")
    failures: int
    items_added: int
    bytes_fetched: int
    websub: WebSubOut

    @classmethod
    def of(cls, source: Source, settings: Settings, now: datetime | None = None) -> SourceOut:
        now = utcnow() if now is None else now
        return cls(
            id=source.id, url=source.url, kind=str(source.kind),
            every=registry.format_interval(source.every_seconds),
            every_seconds=source.every_seconds, content_type=source.default_content_type,
            location=source.default_location, language=source.default_language,
            backfill_pages=source.backfill_pages, paused=source.paused,
            health=cast(Health, registry.health(source, now=now,
                                                stale_hours=settings.source_stale_hours)),
            created_at=source.created_at,
            next_poll_at=None if source.paused else source.next_poll_at,
            last_attempt_at=source.last_attempt_at, last_success_at=source.last_success_at,
            last_status=source.last_status, last_error=source.last_error,
            failing_since=source.failing_since,
            consecutive_failures=source.consecutive_failures or 0, polls=source.polls or 0,
            not_modified=source.not_modified or 0, failures=source.failures or 0,
            items_added=source.items_added or 0, bytes_fetched=source.bytes_fetched or 0,
            websub=WebSubOut(
                hub_url=source.hub_url, topic_url=source.topic_url,
                state=str(source.websub_state) if source.websub_state else None,
                lease_until=source.websub_lease_until,
                last_push_at=source.websub_last_push_at, error=source.websub_error),
        )


class PollOut(BaseModel):
    """What one poll did."""

    status: PollStatus = Field(description="stored: read, new items stored; not_modified: "
                                           "304; failed: see error; skipped: paused or "
                                           "being polled by another poller")
    new_items: int
    error: str | None
    next_poll_at: datetime | None


class SourcePollOut(BaseModel):
    outcome: PollOut
    source: SourceOut


@router.get("/sources", response_model=list[SourceOut], tags=["sources"])
def list_sources(session: SessionDep, settings: SettingsDep):
    now = utcnow()
    return [SourceOut.of(s, settings, now) for s in registry.list_sources(session)]


@router.post("/sources", response_model=SourceOut, status_code=201, tags=["sources"])
def add_source(body: SourceIn, session: SessionDep, settings: SettingsDep):
    source = registry.add_source(
        session, body.url, settings=settings, kind=body.kind, every=body.every,
        content_type=body.content_type, location=body.location, language=body.language,
        backfill_pages=body.backfill_pages)
    session.commit()
    return SourceOut.of(source, settings)


@router.get("/sources/{source_id}", response_model=SourceOut, tags=["sources"],
            responses={404: {"description": "No source with this id"}})
def get_source(source_id: IdPath, session: SessionDep, settings: SettingsDep):
    return SourceOut.of(registry.get_source(session, source_id), settings)


@router.post("/sources/{source_id}/pause", response_model=SourceOut, tags=["sources"],
             responses={404: {"description": "No source with this id"}})
def pause_source(source_id: IdPath, session: SessionDep, settings: SettingsDep):
    source = registry.set_paused(session, source_id, True)
    session.commit()
    return SourceOut.of(source, settings)


@router.post("/sources/{source_id}/resume", response_model=SourceOut, tags=["sources"],
             responses={404: {"description": "No source with this id"}})
def resume_source(source_id: IdPath, session: SessionDep, settings: SettingsDep):
    source = registry.set_paused(session, source_id, False)
    session.commit()
    return SourceOut.of(source, settings)


@router.post("/sources/{source_id}/poll", response_model=SourcePollOut, tags=["sources"],
             responses={404: {"description": "No source with this id"}})
def poll_source(source_id: IdPath, session: SessionDep, settings: SettingsDep):
    """Poll the source now, whatever its schedule, and answer what the poll did."""
    registry.get_source(session, source_id)  # 404 before any fetch
    session.rollback()  # the poller works in its own transactions
    outcomes = polling.poll_due(settings, source_ids=[source_id])
    outcome = next((o for o in outcomes if o.source_id == source_id), None)
    session.expire_all()
    source = registry.get_source(session, source_id)
    if outcome is None:  # another poller holds it right now
        poll = PollOut(status="skipped", new_items=0, next_poll_at=source.next_poll_at,
                       error="another poller is polling this source now; try again shortly")
    else:
        poll = PollOut(status=cast(PollStatus, outcome.status), new_items=outcome.new_items,
                       error=outcome.error, next_poll_at=outcome.next_poll_at)
    return SourcePollOut(outcome=poll, source=SourceOut.of(source, settings))


@router.delete("/sources/{source_id}", status_code=204, tags=["sources"],
               responses={404: {"description": "No source with this id"}})
def remove_source(source_id: IdPath, session: SessionDep) -> Response:
    """Forget the source; the items it brought stay."""
    registry.remove_source(session, source_id)
    session.commit()
    return Response(status_code=204)
