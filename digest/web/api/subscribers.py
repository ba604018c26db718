"""JSON API under /api/v1 (bearer token ``DIGEST_API_TOKEN``), documented at /docs.

Subscribers (CRUD with their filters, CSV import/export), items (publish + the
item_published event), ad-hoc runs (dry run supported) with progress counts, deliveries.
Every input is bounded (lengths, ids that fit the database's integers, sane dates), so bad
input is a 4xx answer and never a database error. The project's errors become HTTP answers
in ``digest.web.errors``; unknown themes, locations, types and time zones are a 422 that
names the bad value and where the valid list is.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import delivery, ingest, taxonomy
from digest import select as selection
from digest.errors import ValidationError
from digest.subscribers import canonical_email as normalise_address
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    Frequency,
    Subscriber,
    SubscriberStatus,
)
from digest.subscribers import (
    FilterSpec,
    erase_subscriber,
    export_csv,
    import_csv,
    suppress,
    timezone_names,
    unsuppress,
    upsert_subscriber,
    with_filters,
)
from digest.queue import queue_for
from digest.web.deps import SessionDep, SettingsDep, get_settings

MAX_ID = 2**31 - 1  # INTEGER columns on PostgreSQL and SQLite alike
MAX_CSV_BYTES = 5 * 1024 * 1024
MAX_PAGE = 500


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _sane_date(value: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not 1900 <= value.year <= 2999:
        raise ValueError("must be between the years 1900 and 2999")
    return value.astimezone(UTC)


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
When = Annotated[datetime, AfterValidator(_sane_date)]
IdPath = Annotated[int, PathParam(ge=1, le=MAX_ID)]


# --- auth ---------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="The value of DIGEST_API_TOKEN.")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = get_settings(request).api_token
    given = credentials.credentials if credentials else ""
    # compare_digest: the time taken does not tell how much of a guess was right.
    if (
        expected is None
        or not expected.get_secret_value()
        or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        raise HTTPException(
            401,
            "API token missing or wrong: send 'Authorization: Bearer <DIGEST_API_TOKEN>'"
            if expected is not None
            else "the API is off: set DIGEST_API_TOKEN to turn it on",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_token)],
    responses={
        401: {"description": "Missing or wrong bearer token"},
        422: {"description": "Invalid input; the detail says which value"},
    },
)


# --- models -------------------------------------------------------------------------------------


class FilterModel(BaseModel):
    """Values match within a facet (OR), facets must all match (AND), empty matches anything."""

    model_config = ConfigDict(extra="forbid")
    themes: list[Name] = Field(default=[], max_length=100)
    locations: list[Name] = Field(default=[], max_length=100)
    content_types: list[Name] = Field(default=[], max_length=100)


class SubscriberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, Field(min_length=3, max_length=320), AfterValidator(_no_nul)]
    status: SubscriberStatus = SubscriberStatus.active
    frequency: Frequency = Frequency.weekly
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_no_nul)] = "UTC"
    weekday: int = Field(0, ge=0, le=6, description="0 = Monday, in the subscriber's time zone")
    hour: int = Field(8, ge=0, le=23, description="Local hour of daily and weekly digests")
    group_by: Literal["theme", "location"] = "theme"
    filters: list[FilterModel] = Field(
        default=[], max_length=20, description="No filter at all: everything"
    )


class SubscriberPatch(BaseModel):
    """Fields left out keep their value; ``filters`` replaces all filters when given."""

    model_config = ConfigDict(extra="forbid")
    status: SubscriberStatus | None = None
    frequency: Frequency | None = None
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_no_nul)] | None = None
    weekday: int | None = Field(None, ge=0, le=6)
    hour: int | None = Field(None, ge=0, le=23)
    group_by: Literal["theme", "location"] | None = None
    filters: list[FilterModel] | None = Field(None, max_length=20)


class SubscriberOut(BaseModel):
    id: int
    email: str
    status: str
    frequency: str
    timezone: str
    weekday: int
    hour: int
    group_by: str
    filters: list[FilterModel]
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None

    @classmethod
    def of(cls, sub: Subscriber) -> SubscriberOut:
        return cls(
            id=sub.id,
            email=sub.email,
            status=sub.status,
            frequency=sub.frequency,
            timezone=sub.timezone,
            weekday=sub.weekday,
            hour=sub.hour,
            group_by=sub.group_by,
            filters=[
                FilterModel(
                    themes=[t.name for t in f.themes],
                    locations=[loc.name for loc in f.locations],
                    content_types=[c.name for c in f.content_types],
                )
                for f in sub.filters
            ],
            created_at=sub.created_at,
            confirmed_at=sub.confirmed_at,
            unsubscribed_at=sub.unsubscribed_at,
        )


class SubscriberPage(BaseModel):
    total: int
    items: list[SubscriberOut]


class ImportLineError(BaseModel):
    line: int
    reason: str


class ImportResult(BaseModel):
    added: int
    updated: int
    errors: list[ImportLineError]


class ItemPayload(BaseModel):
    """One item; ``guid`` (else ``url``) identifies it, so sending it again updates it."""

    model_config = ConfigDict(extra="forbid")
    guid: Annotated[str, Field(max_length=1000), AfterValidator(_no_nul)] | None = None
    url: Annotated[str, Field(max_length=2000), AfterValidator(_no_nul)] | None = None
    title: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_no_nul)]
    summary: Annotated[str, Field(max_length=20000), AfterValidator(_no_nul)] = ""
    published_at: When | None = None
    content_type: Name | None = None
    themes: list[Name] = Field(default=[], max_length=50)
    locations: list[Name] = Field(default=[], max_length=50)


class PublishResult(BaseModel):
    new_item_ids: list[int]
    updated_item_ids: list[int]
    unchanged: int
    backfill_item_ids: list[int] = Field(description="New but too old to be mailed")
    created: dict[str, list[str]] = Field(description="Taxonomy names that were new")


class RunIn(BaseModel):
    """An ad-hoc send. Items: ``item_ids`` and/or a publishing date range, narrowed by
    facets; each goes to the active subscribers (of ``frequencies``, default all) whose
    filters match it. The same request twice sends once, unless ``slot_key`` differs."""

    model_config = ConfigDict(extra="forbid")
    item_ids: list[Id] = Field(default=[], max_length=1000)
    published_from: When | None = None
    published_to: When | None = None
    themes: list[Name] = Field(default=[], max_length=100)
    locations: list[Name] = Field(default=[], max_length=100)
    content_types: list[Name] = Field(default=[], max_length=100)
    frequencies: list[Frequency] = Field(
        default=[], max_length=3, description="Target segment; empty: every active subscriber"
    )
    dry_run: bool = Field(False, description="Plan and count, send nothing")
    slot_key: str | None = Field(None, min_length=1, max_length=150, pattern=r"^[A-Za-z0-9:._-]+$")


class RunOut(BaseModel):
    id: int
    kind: str
    status: str
    dry_run: bool
    created: bool = Field(description="False: this request matched an existing run; nothing new")
    planned: int
    skipped: int
    params: dict
    created_at: datetime
    finished_at: datetime | None
    progress: dict[str, int] = Field(description="Deliveries by status, and total")

    @classmethod
    def of(cls, run: DigestRun, progress: dict[str, int], created: bool = False) -> RunOut:
        return cls(
            id=run.id,
            kind=run.kind,
            status=run.status,
            dry_run=run.dry_run,
            created=created,
            planned=run.planned_count,
            skipped=run.skipped_count,
            params=run.params or {},
            created_at=run.created_at,
            finished_at=run.finished_at,
            progress=progress,
        )


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    run_id: int
    subscriber_id: int
    email: str
    status: str
    item_count: int
    attempts: int
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str | None
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None


class DeliveryMessage(BaseModel):
    delivery_id: int
    run_id: int
    email: str
    status: str
    item_count: int
    subject: str
    html: str
    text: str


class DeliveryPage(BaseModel):
    total: int
    items: list[DeliveryOut]


class NameList(BaseModel):
    facet: str
    names: list[str]


# --- subscribers --------------------------------------------------------------------------------


def _specs(filters: list[FilterModel]) -> list[FilterSpec]:
    return [FilterSpec(list(f.themes), list(f.locations), list(f.content_types)) for f in filters]


def _load(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.scalars(
        select(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .options(
            *with_filters()
        )
        .execution_options(populate_existing=True)
    ).one_or_none()
    if sub is None:
        raise HTTPException(404, f"no subscriber with id {subscriber_id}")
    return sub


@router.get("/subscribers", response_model=SubscriberPage, tags=["subscribers"])
def list_subscribers(
    session: SessionDep,
    status: SubscriberStatus | None = None,
    email: Annotated[str | None, Query(max_length=320, description="Part of the address")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
):
    conds = []
    if status is not None:
        conds.append(Subscriber.status == status.value)
    if email:
        conds.append(Subscriber.email.contains(_no_nul_query(email).lower(), autoescape=True))
    total = session.scalar(select(func.count()).select_from(Subscriber).where(*conds)) or 0
    subs = session.scalars(
        select(Subscriber)
        .where(*conds)
        .order_by(Subscriber.id)
        .limit(limit)
        .offset(offset)
        .options(
            *with_filters()
        )
    )
    return SubscriberPage(total=total, items=[SubscriberOut.of(s) for s in subs])


def _no_nul_query(value: str) -> str:
    try:
        return _no_nul(value)
    except ValueError:
        raise ValidationError("query values must not contain NUL characters") from None


@router.post(
    "/subscribers",
    response_model=SubscriberOut,
    status_code=201,
    tags=["subscribers"],
    responses={409: {"description": "A subscriber with this address exists"}},
)
def create_subscriber(body: SubscriberIn, session: SessionDep):
    address = normalise_address(body.email)
    existing = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
    if existing is not None:
        _exists(existing)
    sub, created = upsert_subscriber(
        session,
        address,
        filters=_specs(body.filters),
        frequency=body.frequency.value,
        timezone=body.timezone,
        weekday=body.weekday,
        hour=body.hour,
        status=body.status.value,
        group_by=body.group_by,
    )
    if not created:
        # Created by another request between our look-up and our write: still a 409.
        sub_id = sub.id
        session.rollback()
        _exists(sub_id)
    _sync_suppression(session, sub.email, was=None, now=body.status)
    session.commit()
    return SubscriberOut.of(_load(session, sub.id))


def _exists(subscriber_id: int) -> None:
    raise HTTPException(
        409,
        f"a subscriber with this address exists (id {subscriber_id}); "
        f"change it with PATCH /api/v1/subscribers/{subscriber_id}",
    )


def _sync_suppression(
    session: Session, email: str, was: str | None, now: SubscriberStatus | None
) -> None:
    """Status "suppressed" set over the API also puts the address on the suppression list
    (which is what the pipeline checks), and leaving it takes the address off again."""
    if now is SubscriberStatus.suppressed and was != SubscriberStatus.suppressed.value:
        suppress(session, email, "admin", "suppressed over the API")
    elif (
        now is not None
        and now is not SubscriberStatus.suppressed
        and (was == SubscriberStatus.suppressed.value)
    ):
        unsuppress(session, email)


@router.get(
    "/subscribers/export",
    tags=["subscribers"],
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "Every subscriber, one row per filter",
        }
    },
)
def export_subscribers(session: SessionDep) -> Response:
    return Response(
        export_csv(session),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


@router.post(
    "/subscribers/import",
    response_model=ImportResult,
    tags=["subscribers"],
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
    description="CSV with a header row (email, frequency, timezone, weekday, hour, themes, "
    "locations, content_types, status; values in a cell separated by '|'). Good rows "
    "are imported, bad rows reported with their line number. Safe to run twice.",
)
async def import_subscribers(request: Request, session: SessionDep):
    raw = await request.body()
    if len(raw) > MAX_CSV_BYTES:
        raise HTTPException(413, f"CSV larger than {MAX_CSV_BYTES // (1024 * 1024)} MB; split it")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError(
            "the CSV is not UTF-8 text; save it as UTF-8 and send it again"
        ) from None
    if "\x00" in text:
        raise ValidationError("the CSV contains NUL characters; is it really a CSV file?")
    from starlette.concurrency import run_in_threadpool

    def work() -> ImportResult:
        report = import_csv(session, text)
        session.commit()
        return ImportResult(
            added=report.added,
            updated=report.updated,
            errors=[ImportLineError(line=ln, reason=r) for ln, r in report.errors],
        )

    return await run_in_threadpool(work)


@router.get(
    "/subscribers/{subscriber_id}",
    response_model=SubscriberOut,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber"}},
)
def get_subscriber(subscriber_id: IdPath, session: SessionDep):
    return SubscriberOut.of(_load(session, subscriber_id))


@router.patch(
    "/subscribers/{subscriber_id}",
    response_model=SubscriberOut,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber"}},
)
def update_subscriber(subscriber_id: IdPath, body: SubscriberPatch, session: SessionDep):
    sub = _load(session, subscriber_id)
    current = SubscriberOut.of(sub)
    was = sub.status
    upsert_subscriber(
        session,
        sub.email,
        filters=_specs(body.filters if body.filters is not None else current.filters),
        frequency=(body.frequency or Frequency(sub.frequency)).value,
        timezone=body.timezone if body.timezone is not None else sub.timezone,
        weekday=body.weekday if body.weekday is not None else sub.weekday,
        hour=body.hour if body.hour is not None else sub.hour,
        status=(body.status or SubscriberStatus(sub.status)).value,
        group_by=body.group_by or sub.group_by,
    )
    _sync_suppression(session, sub.email, was=was, now=body.status)
    session.commit()
    return SubscriberOut.of(_load(session, subscriber_id))


@router.delete(
    "/subscribers/{subscriber_id}",
    status_code=204,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber"}},
)
def delete_subscriber(subscriber_id: IdPath, session: SessionDep) -> Response:
    """Erase the subscriber, their filters, their delivery log and the bounces about them
    (a suppression of the address is kept, so it is never mailed again)."""
    sub = _load(session, subscriber_id)
    erase_subscriber(session, sub)
    session.commit()
    return Response(status_code=204)


# --- taxonomy (the valid lists that 422 answers point to) -----------------------------------------


@router.get("/taxonomy/{facet}", response_model=NameList, tags=["taxonomy"])
def taxonomy_names(facet: Literal["theme", "location", "content_type"], session: SessionDep):
    return NameList(facet=facet, names=taxonomy.list_names(session, facet))


@router.get("/timezones", response_model=NameList, tags=["taxonomy"])
def timezones():
    return NameList(facet="time zone", names=timezone_names())


# --- items --------------------------------------------------------------------------------------


@router.post("/items", response_model=PublishResult, tags=["items"])
def publish_items(body: ItemPayload | list[ItemPayload], session: SessionDep,
                  settings: SettingsDep):
    """Store items (new taxonomy names are created) and send the item_published event for
    each new one: subscribers who want every item at once get an alert."""
    payload = body if isinstance(body, list) else [body]
    if not payload or len(payload) > 500:
        raise ValidationError("send between 1 and 500 items per request")
    items = ingest.parse_json_items(
        json.dumps([p.model_dump(mode="json", exclude_none=True) for p in payload])
    )
    report = ingest.store_items(session, items, source="api")
    session.commit()
    # After the commit, so the worker sees the rows.
    queue_for(settings).publish_items(report.new_item_ids)
    return PublishResult(
        new_item_ids=report.new_item_ids,
        updated_item_ids=report.updated_item_ids,
        unchanged=report.unchanged_count,
        backfill_item_ids=report.backfill_ids,
        created=report.created,
    )


# --- runs ---------------------------------------------------------------------------------------


@router.post(
    "/runs",
    response_model=RunOut,
    tags=["runs"],
    responses={201: {"description": "A new run was planned", "model": RunOut}},
)
def create_run(body: RunIn, response: Response, session: SessionDep, settings: SettingsDep):
    if not body.item_ids and body.published_from is None:
        raise ValidationError(
            "choose the items: give item_ids or published_from (and optionally published_to)"
        )
    if body.published_from and body.published_to and body.published_from > body.published_to:
        raise ValidationError("published_from is after published_to; swap them")
    query = selection.AdhocQuery(
        themes=tuple(body.themes),
        locations=tuple(body.locations),
        content_types=tuple(body.content_types),
        published_from=body.published_from,
        published_to=body.published_to,
        item_ids=tuple(body.item_ids),
        frequencies=tuple(f.value for f in body.frequencies),
    )
    planned = selection.plan_adhoc_run(session, query, dry_run=body.dry_run, slot_key=body.slot_key)
    session.commit()
    if planned.created and not body.dry_run:
        queue_for(settings).deliver(planned.pending_ids)
    response.status_code = 201 if planned.created else 200
    run = session.get(DigestRun, planned.run_id)
    session.refresh(run)
    return RunOut.of(run, delivery.run_progress(session, run.id), created=planned.created)


@router.get("/runs", response_model=list[RunOut], tags=["runs"])
def list_runs(session: SessionDep, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50):
    runs = session.scalars(select(DigestRun).order_by(DigestRun.id.desc()).limit(limit)).all()
    progress = delivery.runs_progress(session, [r.id for r in runs])
    return [RunOut.of(r, progress[r.id]) for r in runs]


@router.get(
    "/runs/{run_id}",
    response_model=RunOut,
    tags=["runs"],
    responses={404: {"description": "No such run"}},
)
def get_run(run_id: IdPath, session: SessionDep):
    run = session.get(DigestRun, run_id)
    if run is None:
        raise HTTPException(404, f"no run with id {run_id}")
    return RunOut.of(run, delivery.run_progress(session, run_id))


# --- deliveries ---------------------------------------------------------------------------------


@router.get("/deliveries", response_model=DeliveryPage, tags=["deliveries"])
def list_deliveries(
    session: SessionDep,
    run_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    subscriber_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: DeliveryStatus | None = None,
    since: Annotated[When | None, Query(description="Planned at or after (ISO 8601)")] = None,
    until: Annotated[When | None, Query(description="Planned before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
):
    conds = []
    if run_id is not None:
        conds.append(Delivery.run_id == run_id)
    if subscriber_id is not None:
        conds.append(Delivery.subscriber_id == subscriber_id)
    if status is not None:
        conds.append(Delivery.status == status.value)
    if since is not None:
        conds.append(Delivery.created_at >= since)
    if until is not None:
        conds.append(Delivery.created_at < until)
    total = session.scalar(select(func.count()).select_from(Delivery).where(*conds)) or 0
    rows = session.scalars(
        select(Delivery).where(*conds).order_by(Delivery.id).limit(limit).offset(offset)
    )
    return DeliveryPage(total=total, items=[DeliveryOut.model_validate(d) for d in rows])


@router.get(
    "/deliveries/{delivery_id}/message",
    response_model=DeliveryMessage,
    tags=["deliveries"],
    responses={404: {"description": "No such delivery, or it carries nothing (skipped)"}},
)
def delivery_message(delivery_id: IdPath, session: SessionDep, settings: SettingsDep):
    """The message of a delivery as it is (or would be) mailed: subject, HTML and text.

    For a dry run's deliveries this is the preview of an ad-hoc send before it is made.
    """
    row = session.get(Delivery, delivery_id)
    rendered = delivery.render_delivery(session, delivery_id, settings=settings) if row else None
    if row is None or rendered is None:
        raise HTTPException(404, f"no delivery with id {delivery_id} that carries items")
    return DeliveryMessage(delivery_id=row.id, run_id=row.run_id, email=row.email,
                           status=row.status, item_count=row.item_count,
                           subject=rendered.subject, html=rendered.html, text=rendered.text)


@router.post(
    "/bounces",
    tags=["bounces"],
    openapi_extra={
        "requestBody": {"required": True,
                        "content": {"message/rfc822": {"schema": {"type": "string"}}}}
    },
    description="A bounce (RFC 3464 delivery-status report) as the raw message, e.g. piped "
    "from the MTA's bounce address. Tied to its delivery by the VERP return path "
    "(bounces+<delivery id>@...), else by the returned Message-ID. 5.1.x suppresses the "
    "address; soft bounces count toward the threshold; 5.7.x is recorded only. Sending the "
    "same report twice records nothing new.",
)
async def receive_bounce(request: Request, session: SessionDep,
                         envelope_to: str | None = Query(default=None, max_length=320)):
    from starlette.concurrency import run_in_threadpool

    from digest.bounces import MAX_BOUNCE_BYTES, process_bounce_message

    raw = await request.body()
    if len(raw) > MAX_BOUNCE_BYTES:
        raise HTTPException(413, f"bounce larger than {MAX_BOUNCE_BYTES // (1024 * 1024)} MB")

    def work() -> dict:
        outcome = process_bounce_message(session, raw, envelope_to=envelope_to)
        session.commit()
        return outcome.as_dict()

    return await run_in_threadpool(work)
