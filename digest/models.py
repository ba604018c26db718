"""All tables, as SQLAlchemy 2 typed models. Schema changes go through Alembic migrations."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class ItemIds(TypeDecorator[list[int]]):
    """A list of item ids: an ``INTEGER[]`` on PostgreSQL, a JSON array on SQLite."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(Integer))
        return dialect.type_descriptor(JSON())

    def process_bind_param(self, value: list[int] | None, dialect: Dialect) -> list[int] | None:
        return None if value is None else sorted(int(v) for v in value)

    def process_result_value(self, value: Any, dialect: Dialect) -> list[int]:
        if value is None:
            return []
        if isinstance(value, str):  # a JSON array written by SQL (json_group_array)
            value = json.loads(value)
        return sorted(int(v) for v in value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


class Frequency(enum.StrEnum):
    immediate = "immediate"
    daily = "daily"
    weekly = "weekly"


class SubscriberStatus(enum.StrEnum):
    pending = "pending"  # asked to subscribe, not confirmed yet
    active = "active"
    unsubscribed = "unsubscribed"
    suppressed = "suppressed"  # hard bounce or admin action


class RunKind(enum.StrEnum):
    weekly = "weekly"
    daily = "daily"
    immediate = "immediate"
    adhoc = "adhoc"


class RunStatus(enum.StrEnum):
    planning = "planning"  # chunks committed up to planned_through; resumed from there
    planned = "planned"
    sending = "sending"
    done = "done"
    held = "held"  # planned past its send-by deadline: waits for an operator (release/cancel)
    cancelled = "cancelled"  # an operator cancelled it; its unsent rows never go


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    deferred = "deferred"
    failed = "failed"
    skipped = "skipped"  # nothing matched: an empty digest is not sent
    cancelled = "cancelled"  # subscriber left or was suppressed before it went out
    dry_run = "dry_run"  # a dry run's row: what would have been sent; nothing sends it


class Fault(enum.StrEnum):
    """Whose fault a failure is: the classes of ``digest.delivery.classify``, which decides
    them, and the ``kind`` a bounce is recorded with (never ``none``). Defined here, with
    the other stored enums, because the shared top imports no stage."""

    hard = "hard"  # the recipient's mailbox does not exist / is disabled: suppress
    soft = "soft"  # the recipient's side, for now (full mailbox, 4xx, dropped): retry, count
    policy = "policy"  # policy or reputation (block list, spam filter, DMARC): pause the domain
    sender = "sender"  # our sender or set-up (5.1.7/5.1.8/5.1.0 sender, refusal at MAIL FROM,
    #                    greeting/EHLO/AUTH, 5.5.x protocol): put the batch back, tell ops
    message = "message"  # the message itself (over the server's SIZE, 5.3.4): fail that one
    #                      message, never the batch, never suppress (sending only)
    none = "none"  # not a failure (delivered, relayed, expanded, a delay warning)


class SuppressionReason(enum.StrEnum):
    """Why an address is on the suppression list (the words of it are in ``detail``)."""

    hard_bounce = "hard_bounce"  # a hard refusal at sending time or a hard bounce report
    soft_bounces = "soft_bounces"  # DIGEST_SOFT_BOUNCE_THRESHOLD soft bounces in the window
    complaint = "complaint"  # the reader marked a digest as spam (ARF report, provider event)
    admin = "admin"  # an operator's decision (admin UI, API, CLI)


def _stored_as_text(enum_class: type[enum.StrEnum], length: int = 20) -> Enum:
    """The column type of a status or kind: the same VARCHAR as before (no CHECK, no
    native enum, so no migration), read back as the enum member, stored as its value."""
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
    )


# --- taxonomy -----------------------------------------------------------------------------


class Theme(Base):
    __tablename__ = "themes"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(300))


class Location(Base):
    """A place ("OSCE Mission to Montenegro"); ``parent`` is its region ("South-Eastern Europe")."""

    __tablename__ = "locations"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("locations.id", ondelete="SET NULL"))
    parent: Mapped[Location | None] = relationship(remote_side=[id])


class ContentType(Base):
    __tablename__ = "content_types"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(300))


item_themes = Table(
    "item_themes",
    Base.metadata,
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    Column("theme_id", ForeignKey("themes.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_item_themes_theme_id", "theme_id"),
)
item_locations = Table(
    "item_locations",
    Base.metadata,
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", ForeignKey("locations.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_item_locations_location_id", "location_id"),
)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    guid: Mapped[str] = mapped_column(String(1000), unique=True)
    url: Mapped[str | None] = mapped_column(String(2000))
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[datetime | None]
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    content_type_id: Mapped[int | None] = mapped_column(
        ForeignKey("content_types.id", ondelete="SET NULL"), index=True
    )
    source: Mapped[str] = mapped_column(String(200), default="")
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("sources.id", ondelete="SET NULL"), index=True
    )
    language: Mapped[str | None] = mapped_column(String(16))  # BCP 47 tag, e.g. "en", "fr"
    # Published longer ago than the maximum age when ingested: kept, listed, never mailed.
    is_backfill: Mapped[bool] = mapped_column(Boolean, default=False)

    content_type: Mapped[ContentType | None] = relationship()
    themes: Mapped[list[Theme]] = relationship(secondary=item_themes, order_by=Theme.name)
    locations: Mapped[list[Location]] = relationship(
        secondary=item_locations, order_by=Location.name
    )


class TermReview(Base):
    """A feed category whose facet nothing told (no ``domain``, a name known in no facet or in
    several): kept for an operator to file (``digest taxonomy review``) instead of silently
    becoming a theme. ``items`` are the stored items that carried it, so filing it tags them."""

    __tablename__ = "term_reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(Text, default="")  # why it could not be filed
    seen_count: Mapped[int] = mapped_column(Integer, default=0)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(200), default="")  # where it was last seen


term_review_items = Table(
    "term_review_items",
    Base.metadata,
    Column("review_id", ForeignKey("term_reviews.id", ondelete="CASCADE"), primary_key=True),
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
)


# --- sources ---------------------------------------------------------------------------------


class SourceKind(enum.StrEnum):
    feed = "feed"  # RSS 2.0 or Atom
    listing = "listing"  # the newsroom's listing page: its HTML, or the seed's text form
    json = "json"  # items as JSON


class WebSubState(enum.StrEnum):
    requested = "requested"  # subscription asked of the hub; its verification not seen yet
    verified = "verified"  # the hub verified our intent: pushes are expected until the lease ends
    denied = "denied"  # the hub refused (hub.mode=denied) or never verified: polling only
    unsubscribed = "unsubscribed"  # we left (source removed or paused)


class Source(Base):
    """A registered source the beat polls (``ingest.polling``): where, how often, the defaults
    it gives its items, its conditional-GET validators and its health."""

    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    kind: Mapped[SourceKind] = mapped_column(_stored_as_text(SourceKind))
    every_seconds: Mapped[int] = mapped_column(Integer, default=900)
    # Defaults given to an item that carries none.
    default_content_type: Mapped[str | None] = mapped_column(String(300))
    default_location: Mapped[str | None] = mapped_column(String(300))
    default_language: Mapped[str | None] = mapped_column(String(16))
    backfill_pages: Mapped[int] = mapped_column(Integer, default=0)  # listing pages, first poll
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Polling: due when next_poll_at <= now; a poller holds it until lease_until.
    next_poll_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lease_until: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(64))
    # Conditional GET validators of the last 200.
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    # Health.
    last_attempt_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status of the last answer
    last_error: Mapped[str | None] = mapped_column(Text)  # in words; None after a success
    failing_since: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    polls: Mapped[int] = mapped_column(BigInteger, default=0)
    not_modified: Mapped[int] = mapped_column(BigInteger, default=0)  # 304 answers
    failures: Mapped[int] = mapped_column(BigInteger, default=0)
    items_added: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_fetched: Mapped[int] = mapped_column(BigInteger, default=0)
    # WebSub (W3C): the hub and topic the feed advertises, our subscription to it.
    hub_url: Mapped[str | None] = mapped_column(String(2000))
    topic_url: Mapped[str | None] = mapped_column(String(2000))
    websub_state: Mapped[WebSubState | None] = mapped_column(_stored_as_text(WebSubState))
    websub_secret: Mapped[str | None] = mapped_column(String(200))
    websub_callback: Mapped[str | None] = mapped_column(String(64), unique=True)  # path token
    websub_requested_at: Mapped[datetime | None]
    websub_lease_until: Mapped[datetime | None]
    websub_last_push_at: Mapped[datetime | None]
    websub_error: Mapped[str | None] = mapped_column(Text)


# --- subscribers ----------------------------------------------------------------------------


class Subscriber(Base):
    __tablename__ = "subscribers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised
    status: Mapped[SubscriberStatus] = mapped_column(
        _stored_as_text(SubscriberStatus), default=SubscriberStatus.active, index=True
    )
    frequency: Mapped[Frequency] = mapped_column(
        _stored_as_text(Frequency), default=Frequency.weekly, index=True
    )
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    weekday: Mapped[int] = mapped_column(Integer, default=0)  # 0 = Monday, local time
    hour: Mapped[int] = mapped_column(Integer, default=8)  # 0-23, local time
    group_by: Mapped[str] = mapped_column(String(20), default="theme")  # theme | location
    # Upper bound (ingested_at) of the last scheduled digest planned for this subscriber.
    watermark: Mapped[datetime | None]
    soft_bounces: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    # The status a suppressed reader had before (lifting the suppression gives it back: a
    # reader who never confirmed or who asked to leave is not subscribed by an operator).
    status_before_suppression: Mapped[SubscriberStatus | None] = mapped_column(
        _stored_as_text(SubscriberStatus))

    filters: Mapped[list[SubscriberFilter]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", order_by="SubscriberFilter.id"
    )


filter_themes = Table(
    "filter_themes",
    Base.metadata,
    Column("filter_id", ForeignKey("subscriber_filters.id", ondelete="CASCADE"), primary_key=True),
    Column("theme_id", ForeignKey("themes.id", ondelete="CASCADE"), primary_key=True),
)
filter_locations = Table(
    "filter_locations",
    Base.metadata,
    Column("filter_id", ForeignKey("subscriber_filters.id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", ForeignKey("locations.id", ondelete="CASCADE"), primary_key=True),
)
filter_content_types = Table(
    "filter_content_types",
    Base.metadata,
    Column("filter_id", ForeignKey("subscriber_filters.id", ondelete="CASCADE"), primary_key=True),
    Column("content_type_id", ForeignKey("content_types.id", ondelete="CASCADE"), primary_key=True),
)


class SubscriberFilter(Base):
    """Three facets; values OR within a facet, facets AND, an empty facet matches anything."""

    __tablename__ = "subscriber_filters"
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    subscriber: Mapped[Subscriber] = relationship(back_populates="filters")
    themes: Mapped[list[Theme]] = relationship(secondary=filter_themes, order_by=Theme.name)
    locations: Mapped[list[Location]] = relationship(
        secondary=filter_locations, order_by=Location.name
    )
    content_types: Mapped[list[ContentType]] = relationship(
        secondary=filter_content_types, order_by=ContentType.name
    )


class Suppression(Base):
    """Addresses nothing is sent to (hard bounces, complaints, admin decisions)."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[SuppressionReason] = mapped_column(_stored_as_text(SuppressionReason, 50))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- runs and deliveries --------------------------------------------------------------------


class DigestRun(Base):
    __tablename__ = "digest_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[RunKind] = mapped_column(_stored_as_text(RunKind))
    # One run per schedule slot: a second beat, a retried tick or a double click adds nothing.
    slot_key: Mapped[str] = mapped_column(String(200), unique=True)
    cutoff: Mapped[datetime]
    status: Mapped[RunStatus] = mapped_column(_stored_as_text(RunStatus), default=RunStatus.planned)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    planned_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    # Runs left half-planned before migration 0014: every subscriber with an id up to this
    # one is planned; their ``PlanningChunk`` rows are laid out after it when resumed.
    planned_through: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="run", lazy="raise_on_sql")


class PlanningChunk(Base):
    """One chunk of a run being planned (ADR 0032): the subscribers after ``after_id`` through
    ``through_id`` (None: no bound), planned once by whichever planner takes it first. The
    rows exist only while their run is ``planning``."""

    __tablename__ = "planning_chunks"
    run_id: Mapped[int] = mapped_column(ForeignKey("digest_runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    after_id: Mapped[int | None] = mapped_column(Integer)
    through_id: Mapped[int | None] = mapped_column(Integer)
    planned_at: Mapped[datetime | None]


UNSENT_SQL = "status IN ('pending', 'sending', 'deferred')"
DUE_SQL = "status IN ('pending', 'deferred')"
SENT_SQL = "sent_at IS NOT NULL"


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("run_id", "subscriber_id"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_subscriber_id_newest_item_at", "subscriber_id", "newest_item_at"),
        # The unsent rows of a run by status, oldest first: the oldest unsent and oldest due
        # delivery of each sending run with a LIMIT 1 (``/metrics``; migration 0012).
        Index("ix_deliveries_unsent", "run_id", "status", "created_at",
              postgresql_where=text(UNSENT_SQL), sqlite_where=text(UNSENT_SQL)),
        Index("ix_deliveries_due", "run_id", "status",
              text("coalesce(next_attempt_at, created_at)"),
              postgresql_where=text(DUE_SQL), sqlite_where=text(DUE_SQL)),
        # Each run's first and last sent_at, and the last hour's sending (the throughput an
        # ETA uses), read from its ends and a range, not from the whole log.
        Index("ix_deliveries_sent_at", "run_id", "sent_at",
              postgresql_where=text(SENT_SQL), sqlite_where=text(SENT_SQL)),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("digest_runs.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))  # the address at planning time
    status: Mapped[DeliveryStatus] = mapped_column(
        _stored_as_text(DeliveryStatus), default=DeliveryStatus.pending
    )
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    # What the message carries: item ids in ascending order (ADR 0030). With ``claims`` the
    # items are the reader's for good: no digest or alert carries them to that reader again
    # (rules N1, H3) while the row is not ``cancelled``. Without: a dry run, a resend of failed
    # messages, an ad-hoc send made with "also include in digests".
    item_ids: Mapped[list[int]] = mapped_column(ItemIds, default=list, nullable=True)
    claims: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The ``ingested_at`` of the newest item carried (None: none). A reader's claims that can
    # reach into a window are those of rows whose newest item is inside it, so planning reads
    # only those (the rows of earlier digests end at the reader's watermark).
    newest_item_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    # The holder of the latest claim (``digest.records.states.claim``): a random token every
    # later write of that claim checks, so a worker that froze past its lease cannot
    # overwrite the row another worker claimed since. Kept after the claim ends (the
    # acceptance journal is matched against it); cleared when an operator re-queues the row.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    smtp_code: Mapped[int | None]
    # What the server answered the last time it was asked (None: no answer, a dropped
    # connection or a timeout); never our own words, which go to ``note``.
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    # Our own word on the latest status change ("gave up after 3 attempts", "cancelled: ...",
    # "not sent, put back: ..."); None when there is nothing to add (sent).
    note: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None]

    run: Mapped[DigestRun] = relationship(back_populates="deliveries")
    subscriber: Mapped[Subscriber] = relationship()


class DeliveryCount(Base):
    """The deliveries counted by run and status, kept by triggers on ``deliveries`` (migration
    0012): every change appends its deltas here, a count is the ``sum()`` of a run's rows,
    and ``digest.delivery.counts.fold`` folds them back to one row per run and status. No
    foreign key: a run's rows sum to zero once its deliveries are gone, and a fold drops
    them."""

    __tablename__ = "delivery_counts"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int] = mapped_column(BigInteger)  # deliveries
    sent: Mapped[int] = mapped_column(BigInteger)  # of them with a sent_at
    too_large: Mapped[int] = mapped_column(BigInteger)  # failed as over the SIZE limit


class Acceptance(Base):
    """The acceptance journal: one row written (autocommit) the moment the SMTP server
    accepts a message, before the batch's group of outcomes is committed. Recovery (lease
    expiry, put-back, the next claim) reads it before anything is sent again: a delivery whose
    claim has an acceptance here is marked sent, not resent (ADR 0020). Append-only; its rows
    go with their delivery."""

    __tablename__ = "acceptances"
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True)
    claim_token: Mapped[str] = mapped_column(String(32), primary_key=True)
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)
    smtp_code: Mapped[int | None]
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(300))


class Bounce(Base):
    """A delivery-status report tied to the delivery it names (VERP)."""

    __tablename__ = "bounces"
    # The same report processed twice (mailbox re-read, webhook retried) records nothing new.
    __table_args__ = (UniqueConstraint("delivery_id", "status_code", "report_hash"),
                      Index("ix_bounces_run_id_kind", "run_id", "kind"))
    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    # The run of that delivery, written by a trigger (migration 0012), None with no delivery:
    # ``/metrics`` counts reports by run kind without a lookup in ``deliveries`` per report.
    run_id: Mapped[int | None] = mapped_column(Integer)
    email: Mapped[str] = mapped_column(String(320))
    status_code: Mapped[str] = mapped_column(String(20))  # enhanced code, e.g. 5.1.1
    kind: Mapped[Fault] = mapped_column(_stored_as_text(Fault))  # never Fault.none
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    # SHA-256 of the report's machine-readable part, whitespace normalised (digest.bounces).
    report_hash: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Complaint(Base):
    """A reader's complaint (an ARF feedback report, a provider's complaint event) tied to the
    delivery it is about; the address is suppressed with reason ``complaint`` (ADR 0025)."""

    __tablename__ = "complaints"
    # The same report or event again (mailbox re-read, webhook retried) records nothing new.
    __table_args__ = (UniqueConstraint("delivery_id", "report_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(20))  # arf | ses | mailgun | sendgrid | postmark
    feedback_type: Mapped[str] = mapped_column(String(40), default="abuse")
    detail: Mapped[str] = mapped_column(Text, default="")  # who reported it, in their words
    report_hash: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProviderEvent(Base):
    """A signed provider webhook already processed (SNS MessageId, Mailgun token, ...): the
    same one again is a replay and is refused (ADR 0026)."""

    __tablename__ = "provider_events"
    provider: Mapped[str] = mapped_column(String(20), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Forgotten after PROVIDER_EVENTS_KEPT_DAYS (digest.web.providers): far longer than any
    # provider retries, and a signed Mailgun or SendGrid post is stale after minutes.
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DomainPause(Base):
    """A receiving domain that refused us on policy grounds (5.7.x at RCPT TO or DATA):
    nothing is sent to it before ``paused_until``, so a receiver that blocks us is not
    hammered (that is what hurts a sender's reputation). Deleting the row lifts the pause."""

    __tablename__ = "domain_pauses"
    # Lower-case, the part after the last '@' of the stored address (same form as stored).
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    paused_until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")  # the reply that caused it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL")
    )


class PrunedTally(Base):
    """What retention deleted, counted by what ``/metrics`` reports of it: the collector adds
    these to the live rows, so its counters never go down when old rows are pruned."""

    __tablename__ = "pruned_tallies"
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)  # a TALLY_* name
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)  # the run kind
    label: Mapped[str] = mapped_column(String(40), primary_key=True)  # status, fault or ""
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


TALLY_DELIVERIES = "deliveries"  # label: the final status the row had
TALLY_SENT = "messages_sent"  # rows that had a sent_at; label ""
TALLY_BOUNCES = "bounces"  # bounce reports deleted with their delivery; label: the fault
