"""The one owner of every change of a delivery's status (and of a run's end).

State machine of a ``deliveries`` row::

    (planning) --> pending | skipped (nothing matched) | dry_run (a dry run's row)
    pending/deferred --claim--> sending (under a lease, holding a random claim token)
    sending --250--> sent --hard bounce report later--> failed (the address is suppressed)
    sending --4xx, dropped connection--> deferred (back-off) ... --out of attempts--> failed
    sending --5xx we cannot tie to the mailbox--> failed (the address is kept)
    sending --5.1.x at RCPT TO/DATA--> failed (the address is suppressed)
    sending --5.7.x (policy)--> deferred until the domain's pause ends
    sending --our set-up or sender refused (connect, EHLO, TLS, AUTH, MAIL FROM, DKIM key,
              template)--> deferred, the attempt given back: put back, never failed
    sending --lease expired (worker died)--> deferred, due now; sent if the acceptance
              journal holds the server's 250 for that claim (ADR 0020)
    pending/deferred --reader left, address suppressed, run cancelled--> cancelled
    failed --operator re-queues--> deferred, due now

Every change is a conditional UPDATE on the status it expects (and, for a claimed row, on the
claim's token: a worker frozen past its lease cannot overwrite the claim of the worker that
took the row over), so a task that runs twice
(redelivered by the broker, retried after a worker was lost, swept up as orphaned) finds
nothing left to claim and sends nothing twice. The database, not the broker, is the record
of what was sent: other modules call these functions and never write ``status`` themselves.

Each change writes our own word on it to ``note``; ``smtp_code`` and ``smtp_reply`` are only
what the SMTP server answered the last time it was asked (written with an attempt's
outcome), never our words.

Leases and due times are the database's clock (``db_now``), not the worker's: a worker whose
clock runs ahead does not take over a lease another worker still holds. Functions given an
explicit ``now`` use it (tests move time that way).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Update,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from digest.db import rowcount
from digest.models import (
    Acceptance,
    Delivery,
    DeliveryStatus,
    DigestRun,
    RunKind,
    RunStatus,
    UTCDateTime,
    utcnow,
)
from digest.settings import Settings

CLAIMABLE = (DeliveryStatus.pending, DeliveryStatus.deferred)
UNFINISHED = (DeliveryStatus.pending, DeliveryStatus.sending, DeliveryStatus.deferred)
# Runs whose rows wait for an operator (held) or will never go (cancelled) are not sent.
_STOPPED_RUNS = (RunStatus.held, RunStatus.cancelled)

# The Core table, for UPDATEs without ORM synchronisation (SQLAlchemy types it FromClause).
_TABLE = cast(Table, Delivery.__table__)
_ACCEPTED = cast(Table, Acceptance.__table__)


def new_claim_token() -> str:
    """A claim's holder token: random, one per claim (``claim``'s ``token``)."""
    return secrets.token_hex(16)


def db_now(session: Session, plus_seconds: float = 0) -> ColumnElement[datetime]:
    """SQL: the database's clock now (plus ``plus_seconds``), in the form the UTC columns
    are stored in: ``now()`` on PostgreSQL; on SQLite the UTC time with microseconds as
    text, as SQLAlchemy writes naive datetimes there, so comparisons stay exact."""
    if session.get_bind().dialect.name == "sqlite":
        text = func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{plus_seconds:+.6f} seconds")
        return type_coerce(text.concat("000"), UTCDateTime())
    clock = func.now()
    if plus_seconds:
        return clock + timedelta(seconds=plus_seconds)
    return type_coerce(clock, UTCDateTime())


def database_now(session: Session) -> datetime:
    """The database's clock now (a sending batch times its deferrals by it)."""
    value: datetime | None = session.scalar(select(db_now(session)))
    return value if value is not None else utcnow()


def _at(session: Session, now: datetime | None, plus_seconds: float = 0
        ) -> ColumnElement[datetime]:
    """``now`` given (tests move time) as a value, else the database's clock."""
    if now is None:
        return db_now(session, plus_seconds)
    return literal(now + timedelta(seconds=plus_seconds), UTCDateTime())


def _journalled(column: str) -> Any:
    """SQL: ``column`` of the acceptance journalled for the row's current claim."""
    return (select(_ACCEPTED.c[column])
            .where(_ACCEPTED.c.delivery_id == _TABLE.c.id,
                   _ACCEPTED.c.claim_token == _TABLE.c.claim_token)
            .scalar_subquery())


def _has_acceptance() -> ColumnElement[bool]:
    return exists().where(_ACCEPTED.c.delivery_id == _TABLE.c.id,
                          _ACCEPTED.c.claim_token == _TABLE.c.claim_token)


def _settle_journalled(session: Session, *where: ColumnElement[bool], why: str) -> list[int]:
    """Rows matching ``where`` whose current claim has a journalled acceptance are sent:
    the server accepted them, only the group's commit was lost. Returns their ids."""
    return sorted(session.scalars(
        update(_TABLE).where(*where, _has_acceptance())
        .values(status=DeliveryStatus.sent, lease_until=None, next_attempt_at=None,
                sent_at=_journalled("accepted_at"), updated_at=_journalled("accepted_at"),
                smtp_code=_journalled("smtp_code"), smtp_reply=_journalled("smtp_reply"),
                message_id=func.coalesce(_journalled("message_id"), _TABLE.c.message_id),
                note=f"accepted by the server (acceptance journal); {why}")
        .returning(_TABLE.c.id)).all())


def _sendable_run() -> ColumnElement[bool]:
    """SQL: the row's run is neither a dry run nor held/cancelled."""
    return ~exists().where(DigestRun.id == Delivery.run_id,
                           DigestRun.dry_run | DigestRun.status.in_(_STOPPED_RUNS))


def retry_delay(attempts: int, settings: Settings) -> timedelta:
    seconds = settings.retry_base_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, 6 * 3600))


# --- sending ----------------------------------------------------------------------------------

def claim(
    session: Session, delivery_ids: list[int], now: datetime | None, settings: Settings,
    *, token: str,
) -> list[int]:
    """Move due pending/deferred rows to ``sending`` under a lease held by ``token``
    (``new_claim_token``); returns the ids we own. Every later write of the claim passes the
    same token. ``now`` None: the lease and what is due are timed by the database's clock.

    A row whose previous claim has a journalled acceptance is marked sent instead (a put-back
    or a recovery that could not read the journal): never sent twice."""
    if not delivery_ids:
        return []
    _settle_journalled(session, _TABLE.c.id.in_(delivery_ids), _TABLE.c.status.in_(CLAIMABLE),
                       why="its outcome was not recorded before it was put back")
    at = _at(session, now)
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.status.in_(CLAIMABLE),
               (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= at),
               _sendable_run())
        .values(status=DeliveryStatus.sending, attempts=Delivery.attempts + 1,
                lease_until=_at(session, now, settings.lease_seconds), updated_at=at,
                claim_token=token)
        .returning(Delivery.id)
    )
    return sorted(session.scalars(stmt).all())


class AcceptanceJournal:
    """Writes each acceptance of a claim the moment the server gives its 250: one INSERT
    in autocommit on a connection of its own, so it is durable before the batch's group of
    outcomes commits (ADR 0020). Recovery reads it before anything is sent again."""

    def __init__(self, session: Session, token: str):
        self.session = session
        self.token = token
        self._conn: Connection | None = None

    def write(self, delivery_id: int, code: int, reply: str, message_id: str,
              accepted_at: datetime) -> None:
        if self._conn is None:
            engine = self.session.get_bind().engine
            self._conn = engine.connect().execution_options(
                isolation_level="AUTOCOMMIT")
        try:
            self._conn.execute(insert(_ACCEPTED).values(
                delivery_id=delivery_id, claim_token=self.token, accepted_at=accepted_at,
                smtp_code=code, smtp_reply=reply, message_id=message_id))
        except Exception:
            self.close()  # its connection may be broken; the next write opens another
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead one has nothing left to close
                conn.close()


# An outcome's value for "the claim's attempt is given back" (attempts - 1 in SQL).
GIVE_BACK_ATTEMPT = "give_back_attempt"


# --- What became of a claimed row: one named outcome a transition, which the sender passes
# to ``Recorder.add`` (or ``record``) and ``values_of`` turns into the UPDATE's values here,
# in one place. An outcome writes only the columns it names: one that asks no server leaves
# the last reply as it was.


@dataclass(frozen=True)
class Sent:
    """The server accepted it (250): ``sent``, the reply kept, our note cleared."""

    smtp_code: int
    smtp_reply: str
    message_id: str
    sent_at: datetime
    status: ClassVar[DeliveryStatus] = DeliveryStatus.sent


@dataclass(frozen=True)
class FailedForGood:
    """The server refused it for good (a hard or permanent refusal, a message too large, the
    last attempt used): ``failed`` with the server's reply (None for a dropped connection)."""

    note: str
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str
    status: ClassVar[DeliveryStatus] = DeliveryStatus.failed


@dataclass(frozen=True)
class FailedWithoutSending:
    """Never given to a server that answered (a message that cannot be built, an address the
    transport cannot carry, a refusal before any command): ``failed``, the last reply kept."""

    note: str
    message_id: str | None = None
    status: ClassVar[DeliveryStatus] = DeliveryStatus.failed


@dataclass(frozen=True)
class Deferred:
    """Refused for now (4xx, a dropped connection, a policy refusal): ``deferred`` to
    ``next_attempt_at``, the attempt counted, the reply kept."""

    note: str
    next_attempt_at: datetime
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str
    status: ClassVar[DeliveryStatus] = DeliveryStatus.deferred


@dataclass(frozen=True)
class DeferredWithoutAttempt:
    """Not tried at all (its domain is paused, a rate limit is reached): ``deferred`` to
    ``until``, the claim's attempt given back, so waiting never uses up attempts."""

    until: datetime
    note: str
    status: ClassVar[DeliveryStatus] = DeliveryStatus.deferred


@dataclass(frozen=True)
class Cancelled:
    """Its reader left or its address was suppressed since planning: ``cancelled``."""

    note: str
    status: ClassVar[DeliveryStatus] = DeliveryStatus.cancelled


Outcome = (Sent | FailedForGood | FailedWithoutSending | Deferred | DeferredWithoutAttempt
           | Cancelled)


def values_of(outcome: Outcome) -> dict[str, object]:
    """The columns an outcome writes: the one place an outcome becomes an UPDATE's values."""
    match outcome:
        case Sent():
            return {"status": outcome.status, "smtp_code": outcome.smtp_code,
                    "smtp_reply": outcome.smtp_reply, "note": None,
                    "message_id": outcome.message_id, "sent_at": outcome.sent_at,
                    "next_attempt_at": None}
        case FailedForGood():
            return {"status": outcome.status, "note": outcome.note,
                    "smtp_code": outcome.smtp_code, "smtp_reply": outcome.smtp_reply,
                    "message_id": outcome.message_id}
        case FailedWithoutSending():
            values: dict[str, object] = {"status": outcome.status, "note": outcome.note}
            if outcome.message_id is not None:
                values["message_id"] = outcome.message_id
            return values
        case Deferred():
            return {"status": outcome.status, "note": outcome.note,
                    "next_attempt_at": outcome.next_attempt_at,
                    "smtp_code": outcome.smtp_code, "smtp_reply": outcome.smtp_reply,
                    "message_id": outcome.message_id}
        case DeferredWithoutAttempt():
            return {"status": outcome.status, "next_attempt_at": outcome.until,
                    "note": outcome.note, GIVE_BACK_ATTEMPT: True}
        case Cancelled():
            return {"status": outcome.status, "note": outcome.note}
    raise TypeError(f"not an outcome: {outcome!r}")

# One UPDATE per set of columns an outcome writes, built once per process: most of a batch
# is "sent" with the same columns, so a flush is one executemany of one cached statement.
_RECORD_STATEMENTS: dict[tuple[str, ...], Update] = {}


def _record_statement(columns: tuple[str, ...]) -> Update:
    stmt = _RECORD_STATEMENTS.get(columns)
    if stmt is None:
        # Bind names are prefixed: SQLAlchemy reserves the bare column names in SET.
        values: dict[str, Any] = {c: bindparam(f"v_{c}") for c in columns if c != GIVE_BACK_ATTEMPT}
        if GIVE_BACK_ATTEMPT in columns:
            values["attempts"] = _TABLE.c.attempts - 1
        # Guarded by 'sending' and the claim's token: a row the sweep took back (lease
        # expired), or another worker claimed since, is not overwritten.
        stmt = (update(_TABLE)
                .where(_TABLE.c.id == bindparam("v_row_id"),
                       _TABLE.c.status == DeliveryStatus.sending,
                       _TABLE.c.claim_token == bindparam("v_claim_token"))
                .values(lease_until=None, **values))
        _RECORD_STATEMENTS[columns] = stmt
    return stmt


def record_many(session: Session, outcomes: Sequence[tuple[int, Outcome]],
                now: datetime | None = None, *, token: str) -> None:
    """Write the outcomes of claimed rows, one executemany per set of columns written, and
    commit once. ``updated_at`` is the time of this write (when the row became the record).

    Each outcome is (delivery id, what became of it: ``Sent``, ``FailedForGood``, ...), its
    columns those ``values_of`` gives. Only rows still in ``sending`` under the claim
    ``token`` are written."""
    if not outcomes:
        return
    now = now or utcnow()
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for delivery_id, outcome in outcomes:
        values = values_of(outcome)
        columns = tuple(sorted({"updated_at", *values}))
        params = {f"v_{c}": v for c, v in values.items() if c != GIVE_BACK_ATTEMPT}
        params.setdefault("v_updated_at", now)
        params["v_row_id"] = delivery_id
        params["v_claim_token"] = token
        groups.setdefault(columns, []).append(params)
    for columns, rows in groups.items():
        session.execute(_record_statement(columns), rows)
    session.commit()


def record(session: Session, delivery_id: int, outcome: Outcome, *, token: str) -> None:
    """Write one outcome of a claimed row and commit it at once: the row, not the broker,
    says what was sent."""
    record_many(session, [(delivery_id, outcome)], token=token)


class Recorder:
    """The outcomes of a batch, written in groups: ``record_many`` every ``record_every``
    outcomes or once the oldest waiting one is ``record_ms`` old, whichever comes first, and
    whenever the sender calls ``flush`` (end of batch, before a put-back or a raise).

    A worker that dies loses the outcomes not yet written; their rows stay ``sending`` until
    lease recovery, which marks those the acceptance journal holds as sent and sends the
    others again: at most the message in flight per crashed worker process (ADR 0016, 0020)."""

    def __init__(self, session: Session, settings: Settings, token: str):
        self.session = session
        self.token = token
        self.every = settings.record_every
        self.max_age = settings.record_ms / 1000
        self.waiting: list[tuple[int, Outcome]] = []
        self._oldest = 0.0

    def add(self, delivery_id: int, outcome: Outcome) -> None:
        """Buffer one outcome; writes the group when it is full or old enough."""
        if not self.waiting:
            self._oldest = time.monotonic()
        self.waiting.append((delivery_id, outcome))
        if len(self.waiting) >= self.every:
            self.flush()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        """Write the group if its oldest outcome has waited ``record_ms`` (called before each
        send too, so a slow server does not hold outcomes longer)."""
        if self.waiting and time.monotonic() - self._oldest >= self.max_age:
            self.flush()

    def flush_with(self, delivery_id: int, outcome: Outcome) -> None:
        """This outcome and those waiting, written now in the session's open transaction (a
        domain's pause, a suppression): they commit together, or none of them does."""
        self.waiting.append((delivery_id, outcome))
        self.flush()

    def flush(self) -> None:
        """Write and commit what is waiting. Kept waiting if the write fails, so the caller
        may try again after a rollback."""
        if self.waiting:
            record_many(self.session, self.waiting, token=self.token)
            self.waiting = []

    @property
    def waiting_ids(self) -> set[int]:
        return {delivery_id for delivery_id, _ in self.waiting}


def retry_or_give_up(attempts: int, settings: Settings, reason: str,
                     next_attempt_at: datetime, *, smtp_code: int | None,
                     smtp_reply: str | None, message_id: str) -> Deferred | FailedForGood:
    """The outcome of a try that may be repeated: deferred to ``next_attempt_at``, or failed
    for good once the delivery has used its ``max_attempts``."""
    if attempts >= settings.max_attempts:
        return FailedForGood(f"gave up after {attempts} attempts: {reason}", smtp_code,
                             smtp_reply, message_id)
    return Deferred(reason, next_attempt_at, smtp_code, smtp_reply, message_id)


def defer_without_attempt(session: Session, delivery_id: int, until: datetime,
                          note: str, *, token: str) -> None:
    """Not tried at all (its domain is paused): deferred, and the claim's attempt given back,
    so a long pause never makes a delivery run out of attempts."""
    record(session, delivery_id, DeferredWithoutAttempt(until, note), token=token)


def put_back(session: Session, delivery_ids: Iterable[int], note: str, settings: Settings,
             now: datetime | None = None, *, token: str, give_back_attempt: bool = True) -> int:
    """A set-up failure (our server, sender, DKIM key, template, settings) is nobody's
    reader's fault: the claimed rows go back to deferred with the note, their attempt given
    back so they never fail for it, due again after the base back-off. Commits.

    ``give_back_attempt=False`` for a crash of our own code: the rows still go back, but a
    row that keeps crashing backs off further each time instead of looping at the base.

    Only rows still held by the claim ``token``; one the acceptance journal says the server
    accepted is marked sent instead. Returns how many went back."""
    ids = list(delivery_ids)
    if not ids:
        return 0
    ours = (_TABLE.c.id.in_(ids), _TABLE.c.status == DeliveryStatus.sending,
            _TABLE.c.claim_token == token)
    _settle_journalled(session, *ours, why="its outcome was not recorded before the batch "
                       "stopped")
    count = rowcount(session,
        update(_TABLE).where(*ours)
        .values(status=DeliveryStatus.deferred, lease_until=None, updated_at=_at(session, now),
                attempts=_less_one(session) if give_back_attempt else _TABLE.c.attempts,
                next_attempt_at=_at(session, now, settings.retry_base_seconds),
                note=note))
    session.commit()
    return count


def _less_one(session: Session) -> ColumnElement[int]:
    less = _TABLE.c.attempts - 1
    # SQLite's two-argument max() is PostgreSQL's greatest().
    if session.get_bind().dialect.name == "sqlite":
        return func.max(less, 0)
    return func.greatest(less, 0)


# --- planning ---------------------------------------------------------------------------------

def mark_planned(session: Session, run_id: int, *, dry_run: bool,
                 subscribers_after: int | None = None,
                 subscribers_through: int | None = None) -> None:
    """After planning: an empty digest is skipped (recorded, never sent); a dry run's rows
    are marked apart so progress counts and the delivery log never show them as waiting.

    With ``subscribers_after`` / ``subscribers_through`` only the rows of subscribers in that
    id range (after < id <= through): a planned chunk, so its cost does not grow with the run."""
    of_range = [Delivery.run_id == run_id]
    if subscribers_after is not None:
        of_range.append(Delivery.subscriber_id > subscribers_after)
    if subscribers_through is not None:
        of_range.append(Delivery.subscriber_id <= subscribers_through)
    session.execute(
        update(Delivery)
        .where(*of_range, Delivery.item_count == 0, Delivery.status == DeliveryStatus.pending)
        .values(status=DeliveryStatus.skipped, note="skipped: no new items matched"))
    if dry_run:
        session.execute(
            update(Delivery)
            .where(*of_range, Delivery.status == DeliveryStatus.pending)
            .values(status=DeliveryStatus.dry_run, note="dry run: would have been sent"))


# --- cancelling -------------------------------------------------------------------------------

def cancel_for_subscriber(session: Session, subscriber_id: int, note: str) -> int:
    """Deliveries planned but not sent yet to this subscriber will not go out; what they had
    claimed is released (``release_cancelled_claims``)."""
    cancelled = rowcount(session,
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status.in_(CLAIMABLE))
        .values(status=DeliveryStatus.cancelled, updated_at=utcnow(), note=note))
    release_cancelled_claims(session, subscriber_id)
    return cancelled


def release_cancelled_claims(session: Session, subscriber_id: int) -> int:
    """How many items this subscriber's cancelled deliveries had claimed: those items never
    reached them, so a digest after they come back may carry them (rules R6, N1). A cancelled
    row claims nothing (``digest.records.contents.claiming``), so there is nothing to delete:
    the status change released them."""
    return session.scalar(select(func.coalesce(func.sum(Delivery.item_count), 0)).where(
        Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.cancelled,
        Delivery.claims.is_(True))) or 0


def cancel_claimed(session: Session, delivery_id: int, note: str, *, token: str) -> None:
    """A claimed row whose reader left or whose address was suppressed since planning."""
    record(session, delivery_id, Cancelled(note), token=token)


def cancel_run(session: Session, run_id: int, reason: str) -> int:
    """An operator's decision: the run's rows not sent yet never go; the run is cancelled.
    Returns how many rows were cancelled (the caller commits)."""
    now = utcnow()
    count = rowcount(session,
        update(Delivery).where(Delivery.run_id == run_id, Delivery.status.in_(CLAIMABLE))
        .values(status=DeliveryStatus.cancelled, updated_at=now, note=f"cancelled: {reason}"))
    session.execute(update(DigestRun).where(DigestRun.id == run_id)
                    .values(status=RunStatus.cancelled, finished_at=now))
    return count


# --- after sending ----------------------------------------------------------------------------

def mark_bounced(session: Session, delivery_id: int, reply: str) -> bool:
    """A sent digest that bounced later (a hard bounce report) is failed; when it was sent
    and what SMTP said at the time stay, the report's words are the note."""
    return bool(rowcount(session, update(_TABLE).where(_TABLE.c.id == delivery_id,
                                                       _TABLE.c.status == DeliveryStatus.sent)
                         .values(status=DeliveryStatus.failed, updated_at=utcnow(),
                                 note=f"bounced after it was accepted: {reply}".strip())))


def requeue_failed(session: Session, delivery_ids: list[int]) -> int:
    """An admin's second chance for failed deliveries (deferred, due now). The old claim's
    token goes: an acceptance journalled for it (a message that bounced later) does not
    count as this new try's."""
    now = utcnow()
    return rowcount(session, update(Delivery).where(Delivery.id.in_(delivery_ids),
                                                     Delivery.status == DeliveryStatus.failed)
                     .values(status=DeliveryStatus.deferred, next_attempt_at=now,
                             attempts=0, updated_at=now, claim_token=None))


def finish_run_if_done(session: Session, run_id: int) -> bool:
    # EXISTS, not a count: every batch asks, and a count read all the run's unsent rows
    # (a run of 100,000 read about 50 million index entries over its batches).
    if session.scalar(select(exists().where(Delivery.run_id == run_id,
                                            Delivery.status.in_(UNFINISHED)))):
        return False
    session.execute(update(DigestRun).where(DigestRun.id == run_id,
                                            DigestRun.status == RunStatus.sending)
                    .values(status=RunStatus.done, finished_at=utcnow()))
    return True


# --- recovery ---------------------------------------------------------------------------------

def due_for_retry(
    session: Session, now: datetime | None = None, limit: int = 10_000
) -> list[int]:
    """Deferred deliveries whose next attempt is due (the periodic retry task sends them),
    by the database's clock unless ``now`` is given."""
    return list(session.scalars(
        select(Delivery.id).where(Delivery.status == DeliveryStatus.deferred,
                                  Delivery.next_attempt_at <= _at(session, now),
                                  _sendable_run())
        .order_by(Delivery.id).limit(limit)))


def recover_expired_leases(session: Session, now: datetime | None = None) -> list[int]:
    """Rows left in ``sending`` by a worker that died go back to deferred, due now; those
    whose acceptance the journal holds are sent (not returned: nothing to send again).
    Timed by the database's clock unless ``now`` is given; returns the deferred ids."""
    at = _at(session, now)
    expired = (_TABLE.c.status == DeliveryStatus.sending, _TABLE.c.lease_until < at)
    _settle_journalled(session, *expired,
                       why="the worker stopped before recording it (lease expired)")
    return sorted(session.scalars(
        update(_TABLE)
        .where(*expired)
        .values(status=DeliveryStatus.deferred, next_attempt_at=at, lease_until=None,
                note="lease expired: the worker stopped before recording a result",
                updated_at=at)
        .returning(_TABLE.c.id)
    ).all())


def orphaned_pending(session: Session, now: datetime, older_than: timedelta,
                     limit: int = 50_000) -> list[int]:
    """Pending rows nobody has touched for ``older_than``: their task was lost (a broker
    restart or failover, a process killed between the commit and the enqueue). They are
    stamped now, so the next sweep leaves them alone while the new task is on its way; a
    task that was not lost after all finds them claimed and does nothing."""
    ids = list(session.scalars(
        select(Delivery.id).where(Delivery.status == DeliveryStatus.pending,
                                  Delivery.updated_at < now - older_than, _sendable_run())
        .order_by(Delivery.id).limit(limit)))
    if ids:
        session.execute(update(Delivery).where(Delivery.id.in_(ids),
                                               Delivery.status == DeliveryStatus.pending)
                        .values(updated_at=now))
    return ids


def finish_done_runs(session: Session) -> list[int]:
    """Runs still marked ``sending`` whose every row is final (the worker that recorded the
    last one died before closing the run): closed now. Returns their ids."""
    open_rows = exists().where(Delivery.run_id == DigestRun.id, Delivery.status.in_(UNFINISHED))
    ids = list(session.scalars(select(DigestRun.id).where(
        DigestRun.status == RunStatus.sending, ~open_rows)))
    if ids:
        session.execute(update(DigestRun).where(DigestRun.id.in_(ids))
                        .values(status=RunStatus.done, finished_at=utcnow()))
    return ids


def hold_late_runs(session: Session, now: datetime, send_by: timedelta) -> list[int]:
    """Scheduled runs that could not start before their send-by deadline (planned on time,
    but no worker took a row since): held for an operator instead of going out days late.
    A run that has begun sending is finished, not held halfway."""
    started = exists().where(Delivery.run_id == DigestRun.id,
                             Delivery.status.not_in((DeliveryStatus.pending,
                                                     DeliveryStatus.skipped,
                                                     DeliveryStatus.cancelled)))
    ids = list(session.scalars(select(DigestRun.id).where(
        DigestRun.status == RunStatus.sending, ~DigestRun.dry_run,
        DigestRun.kind.in_((RunKind.weekly, RunKind.daily)), DigestRun.created_at < now - send_by,
        ~started)))
    if ids:
        session.execute(update(DigestRun).where(DigestRun.id.in_(ids),
                                                DigestRun.status == RunStatus.sending)
                        .values(status=RunStatus.held))
    return ids


@dataclass
class Swept:
    recovered: list[int] = field(default_factory=list)  # expired leases, now deferred and due
    orphaned: list[int] = field(default_factory=list)  # pending rows whose task was lost
    runs_finished: list[int] = field(default_factory=list)
    runs_held: list[int] = field(default_factory=list)  # past their send-by deadline


def sweep(session: Session, settings: Settings, now: datetime | None = None) -> Swept:
    """One pass of the periodic sweep (the caller commits, then enqueues what it found).
    Leases are timed by the database's clock unless ``now`` is given."""
    given, now = now, now or utcnow()
    # Held first: the rows of a run too late to start are not swept up and sent days late.
    held = hold_late_runs(session, now, timedelta(hours=settings.send_by_hours))
    return Swept(
        runs_held=held,
        recovered=recover_expired_leases(session, given),
        orphaned=orphaned_pending(session, now, timedelta(seconds=settings.orphan_after_seconds)),
        runs_finished=finish_done_runs(session),
    )
