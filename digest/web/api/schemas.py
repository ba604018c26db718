"""The request and response bodies of the JSON API, and the bounded types they are built from.

Every input is bounded (lengths, ids that fit the database's integers, sane dates), so bad
input is a 4xx answer and never a database error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from digest.errors import ValidationError
from digest.models import DigestRun, Frequency, Subscriber, SubscriberStatus

MAX_ID = 2**31 - 1  # INTEGER columns on PostgreSQL and SQLite alike
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


def no_nul_query(value: str) -> str:
    """A query parameter without NUL, else a 422 (query values are not pydantic fields)."""
    try:
        return _no_nul(value)
    except ValueError:
        raise ValidationError("query values must not contain NUL characters") from None


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
    skipped: list[ImportLineError] = Field(
        default=[], description="Lines left alone: they would have re-subscribed someone who "
        "left, or an address on the suppression list")


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
    filters match it, and is then left out of their digests and alerts unless
    ``also_in_digests``. The same request twice sends once, unless ``slot_key`` differs."""

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
    also_in_digests: bool = Field(
        False, description="Let the readers' digests and alerts carry these items too; by "
        "default an item this send carries to a reader is not carried again by their "
        "digests and alerts")
    dry_run: bool = Field(False, description="Plan and count, send nothing")
    slot_key: str | None = Field(None, min_length=1, max_length=150, pattern=r"^[A-Za-z0-9:._-]+$")


class ThroughputOut(BaseModel):
    rate: float = Field(description="Messages a second")
    messages: int
    seconds: float
    source: str = Field(description="What it was measured over: the last hour or the last runs")


class OutcomeOut(BaseModel):
    """What a finished run came to."""

    status: str
    sent: int
    failed: int
    skipped: int
    cancelled: int
    sending_seconds: float | None = Field(description="First send to last; None: none sent")
    total_seconds: float | None = Field(description="Planned to finished")


class ForecastOut(BaseModel):
    """A run's forecast (``digest.delivery.forecast``): what it sends and how long it takes;
    for a finished run, ``outcome`` instead."""

    run_id: int
    recipients: int = Field(description="Readers the run considered, empty digests included")
    messages: int = Field(description="Messages it sends (a running run: not final yet)")
    skipped: int = Field(description="Empty digests, recorded and not sent")
    already_final: int = Field(description="A running run's messages already final")
    sampled: int = Field(description="Messages built to measure the average size")
    average_bytes: int | None
    total_bytes: int | None
    size_error: str | None
    rate_limit: float = Field(description="DIGEST_SEND_RATE, messages a second; 0: unlimited")
    seconds_at_limit: float | None = Field(description="None: no rate limit")
    measured: ThroughputOut | None = Field(
        description="None: not measured over enough sending yet (see measured_seen)")
    measured_seen: ThroughputOut | None = Field(
        description="The recent sending, when too little to be used")
    seconds_at_measured: float | None
    estimate_seconds: float | None = Field(description="None: no rate to estimate with")
    estimate_basis: str = Field(description="Which rate the estimate used, in words")
    outcome: OutcomeOut | None = Field(description="A finished run: what it came to")
    summary: list[str] = Field(description="The forecast in words, as the CLI prints it")


class EtaOut(BaseModel):
    done: int
    messages: int
    sent: int
    rate: float | None = Field(description="The rate the ETA is at; None: no rate yet")
    seconds_left: float | None = Field(description="None: no rate yet, or not progressing")
    rate_source: str | None = Field(
        default=None, description="Whose rate: this run's, the measured one, DIGEST_SEND_RATE")
    stalled: bool = Field(default=False, description="Nothing can move now (see waiting)")
    waiting: str | None = Field(default=None,
                                description="Deferred messages that may not go yet, and why")
    summary: str


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
    forecast: ForecastOut | None = Field(default=None, description="A dry run's forecast")
    eta: EtaOut | None = Field(default=None, description="A sending run's progress and ETA")

    @classmethod
    def of(cls, run: DigestRun, progress: dict[str, int], created: bool = False, *,
           forecast: ForecastOut | None = None, eta: EtaOut | None = None) -> RunOut:
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
            forecast=forecast,
            eta=eta,
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
    smtp_reply: str | None  # the SMTP server's own words, the last time it was asked
    note: str | None  # ours: why the row is in its status (gave up, cancelled, put back...)
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
