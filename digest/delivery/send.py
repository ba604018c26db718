"""Sending a batch: claim the rows, build each message, hand it to SMTP, record the outcome.

Every status change goes through ``digest.records.states``; every failure is read by
``digest.delivery.classify``, the one classifier shared with bounce reports. A failure that
is about us (connect, greeting/EHLO/TLS/AUTH, any refusal at MAIL FROM, a DKIM key or a
template that fails, contradictory settings) puts the whole batch back as deferred with the
reason and raises ``SendSetupError`` for the operator: it never fails a row for good or
suppresses anyone.

A message over the size the server announces (SIZE) or refused as too large (5.3.4, 552)
fails alone with a note saying so; the rest of the batch is sent. Each acceptance is
journalled the moment the server gives its 250 (``states.AcceptanceJournal``), and every
write of the batch carries its claim's token (ADR 0020).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from digest import db
from digest.delivery.classify import Fault, classify_smtp
from digest.delivery.limits import Limiter, limiter_for, new_holder
from digest.delivery.transport import Transport, kept_transport
from digest.errors import (
    ConfigError,
    DeliveryError,
    DigestError,
    PermanentDeliveryError,
    SendSetupError,
)
from digest.logs import bind_ids, get_logger, reset_ids
from digest.mail import MessageFactory
from digest.mail.compose import Reader
from digest.models import (
    ContentType,
    Delivery,
    DeliveryStatus,
    DigestRun,
    Item,
    Location,
    RunKind,
    Subscriber,
    SubscriberFilter,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    Theme,
    filter_locations,
    filter_themes,
    item_locations,
    item_themes,
    utcnow,
)
from digest.records import states
from digest.records.contents import delivery_contents
from digest.records.pauses import Pause, active_pauses, pause_domain, recipient_domain
from digest.records.suppressions import suppress
from digest.render import RenderedEmail, RenderItem
from digest.settings import Settings

log = get_logger(__name__)

# How the note of a delivery failed for its size begins (``/metrics`` counts them by it).
TOO_LARGE = "message too large"

@dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    cancelled: int = 0
    # Rows another worker took over (this one froze past its lease): not sent, not written.
    lost: int = 0
    outcomes: dict[int, str] = field(default_factory=dict)
    # Rows deferred by a rate limit, by when they may go: the caller enqueues each group then.
    later: list[tuple[datetime, list[int]]] = field(default_factory=list)


@dataclass(frozen=True)
class LoadedRun:
    id: int
    kind: RunKind


@dataclass(frozen=True)
class LoadedDelivery:
    """A delivery as sending and rendering read it: plain values from one Core query (no
    ORM identity map or relationship loading per message; the profile's largest cost)."""

    id: int
    run_id: int
    subscriber_id: int
    email: str
    attempts: int
    run: LoadedRun
    subscriber: Reader


def load_batch(session: Session, ids: list[int]) -> list[tuple[LoadedDelivery, list[RenderItem]]]:
    """The claimed deliveries with what each carries, in a fixed number of queries.

    The items of a batch are mostly shared (a digest run sends the same week's news to
    everyone), so each item is loaded and snapshotted once per batch, not once per message.
    """
    rows = session.execute(
        select(Delivery.id, Delivery.run_id, Delivery.subscriber_id, Delivery.email,
               Delivery.attempts, DigestRun.kind, Subscriber.group_by, Subscriber.timezone)
        .join(DigestRun, DigestRun.id == Delivery.run_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.id.in_(ids)).order_by(Delivery.id)
    ).all()
    chosen = _chosen_labels(session, {row.subscriber_id for row in rows})
    runs = {run_id: LoadedRun(run_id, kind) for _, run_id, _, _, _, kind, _, _ in rows}
    deliveries = [
        LoadedDelivery(
            id=row.id, run_id=row.run_id, subscriber_id=row.subscriber_id, email=row.email,
            attempts=row.attempts, run=runs[row.run_id],
            subscriber=Reader(id=row.subscriber_id, group_by=row.group_by,
                              timezone=row.timezone,
                              themes=chosen.get(("theme", row.subscriber_id), ()),
                              locations=chosen.get(("location", row.subscriber_id), ())))
        for row in rows
    ]
    contents = delivery_contents(session, Delivery.__table__.c.id.in_(ids))
    carried = session.execute(
        select(contents.c.delivery_id, contents.c.item_id).where(contents.c.delivery_id.in_(ids))
    ).all()
    snapshots = _item_snapshots(session, {item_id for _, item_id in carried})
    per_delivery: dict[int, list[RenderItem]] = defaultdict(list)
    for delivery_id, item_id in carried:
        per_delivery[delivery_id].append(snapshots[item_id])
    return [(d, per_delivery[d.id]) for d in deliveries]


def _item_snapshots(session: Session, item_ids: set[int]) -> dict[int, RenderItem]:
    """The batch's items as the renderer reads them, in three plain queries: what
    ``render_items_from_models`` makes of the ORM objects (themes and places by name), without
    building them (a batch of 100 readers carries about 200 items; building them was a
    millisecond a message)."""
    if not item_ids:
        return {}
    i = Item.__table__.c
    names: dict[tuple[str, int], list[str]] = defaultdict(list)
    for kind, label, link, link_col in (
        ("theme", Theme, item_themes, item_themes.c.theme_id),
        ("location", Location, item_locations, item_locations.c.location_id),
    ):
        for item_id, name in session.execute(
                select(link.c.item_id, label.name).join(label, label.id == link_col)
                .where(link.c.item_id.in_(item_ids)).order_by(link.c.item_id, label.name)):
            names[(kind, item_id)].append(name)
    rows = session.execute(
        select(i.id, i.title, i.url, i.summary, i.published_at, ContentType.name)
        .outerjoin(ContentType, ContentType.id == i.content_type_id)
        .where(i.id.in_(item_ids)))
    return {row.id: RenderItem(id=row.id, title=row.title, url=row.url,
                               summary=row.summary or "", published_at=row.published_at,
                               content_type=row.name,
                               themes=tuple(names[("theme", row.id)]),
                               locations=tuple(names[("location", row.id)]))
            for row in rows}


def _chosen_labels(session: Session,
                   subscriber_ids: set[int]) -> dict[tuple[str, int], tuple[str, ...]]:
    """Each subscriber's theme and location names over all filters, in the order
    ``Reader.of`` reads them off the ORM (filters by id, names by name), each once."""
    chosen: dict[tuple[str, int], dict[str, None]] = defaultdict(dict)
    if not subscriber_ids:
        return {}
    for kind, label, link, link_col in (
        ("theme", Theme, filter_themes, filter_themes.c.theme_id),
        ("location", Location, filter_locations, filter_locations.c.location_id),
    ):
        for sub_id, name in session.execute(
            select(SubscriberFilter.subscriber_id, label.name)
            .join(link, link.c.filter_id == SubscriberFilter.id)
            .join(label, label.id == link_col)
            .where(SubscriberFilter.subscriber_id.in_(subscriber_ids))
            .order_by(SubscriberFilter.subscriber_id, SubscriberFilter.id, label.name)
        ):
            chosen[(kind, sub_id)][name] = None
    return {key: tuple(names) for key, names in chosen.items()}


def render_delivery(session: Session, delivery_id: int, *, in_browser: bool = False,
                    settings: Settings) -> RenderedEmail | None:
    """A delivery's subject, HTML and text as they are (or would be) mailed, from the same
    code that sends them; None if there is no such delivery or it carries nothing. Works for
    a dry run's rows: that is how an operator previews an ad-hoc send before making it."""
    loaded = load_batch(session, [delivery_id])
    if not loaded or not loaded[0][1]:
        return None
    delivery, items = loaded[0]
    return MessageFactory(settings).render(
        delivery, delivery.run, items, in_browser=in_browser)


def render_for_browser(session: Session, delivery_id: int,
                       settings: Settings) -> str | None:
    """The HTML of a delivery as it was mailed ("view in your browser"); None if it carried
    nothing."""
    rendered = render_delivery(session, delivery_id, in_browser=True, settings=settings)
    return rendered.html if rendered else None


class _SenderRefused(Exception):
    """Raised inside a batch when a reply says the fault is ours; carries the verdict."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def send_deliveries(delivery_ids: list[int], *, transport: Transport | None = None,
                    now: datetime | None = None, settings: Settings,
                    limiter: Limiter | None = None) -> BatchResult:
    """Claim, render, send and record a batch over the process's kept SMTP connection (or
    ``transport``). Safe to run twice. Outcomes are written in groups (``states.Recorder``).
    Rows over a rate limit (``limiter``, else the settings') are deferred, listed in
    ``BatchResult.later``."""
    result = BatchResult()
    session = db._sessionmaker(settings.database_url)()
    token = states.new_claim_token()
    journal = states.AcceptanceJournal(session, token)
    try:
        # Without ``now`` the lease is timed by the database's clock (never this worker's).
        owned = states.claim(session, list(delivery_ids), now, settings, token=token)
        # The batch's clock: ``now`` as given (tests move it), else the database's, both
        # advancing with real time: due times written by a worker whose clock is off are not.
        offset = (now or states.database_now(session)) - utcnow()
        session.commit()

        def clock() -> datetime:
            return utcnow() + offset

        result.claimed = len(owned)
        if not owned:
            return result
        recorder = states.Recorder(session, settings, token)
        claimed_at = time.monotonic()
        try:
            _send_batch(session, owned, transport, settings, result, recorder, clock,
                        limiter or limiter_for(settings), journal)
        except BaseException as exc:
            # Whatever stopped the batch, the rows it had not finished go back (never failed):
            # a set-up error, a refusal that is about us, or a crash of our own code. The
            # outcomes already known are written first.
            reason = exc.reason if isinstance(exc, _SenderRefused) else _describe(exc)
            _flush_while_leased(session, recorder, claimed_at, settings)
            left = [i for i in owned if i not in result.outcomes]
            try:
                session.rollback()
                states.put_back(session, left, f"not sent, put back: {reason}", settings,
                                token=token,
                                give_back_attempt=isinstance(exc, (_SenderRefused, ConfigError)))
            except Exception:  # the database itself is gone: lease recovery brings them back
                session.rollback()
            log.warning("batch put back", reason=reason, put_back=len(left),
                        done=len(result.outcomes))
            if isinstance(exc, (_SenderRefused, ConfigError)):
                raise SendSetupError(
                    f"{len(left)} deliveries put back (deferred, not failed): {reason}; fix "
                    "the set-up and they go out on their next retry") from exc
            raise
        return result
    finally:
        journal.close()
        session.close()


# Of the lease, the part a batch may spend retrying its outcome write: the task's soft time
# limit is 0.8 of the lease (workers/celery_app.py), and the put-back comes after.
_WRITE_RETRY_SHARE = 0.7


def _flush_while_leased(session: Session, recorder: states.Recorder, claimed_at: float,
                        settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
                        monotonic: Callable[[], float] = time.monotonic) -> bool:
    """Write the outcomes already known, retrying with back-off while the database refuses
    (restarting, read-only, disk full, partitioned: any DBAPI error) for the batch's lease:
    the messages were accepted. Past that, recovery owns the rows, and the acceptance journal
    keeps the accepted ones from being sent again. True once written."""
    deadline = claimed_at + settings.lease_seconds * _WRITE_RETRY_SHARE
    pause = 0.25
    while True:
        try:
            session.rollback()
            recorder.flush()
            return True
        except DBAPIError as exc:
            session.rollback()
            if monotonic() + pause >= deadline:
                log.warning("outcomes not written, left to lease recovery",
                            waiting=len(recorder.waiting), error=_describe(exc))
                return False
            sleep(pause)
            pause = min(pause * 2, 5.0)
        except Exception:
            session.rollback()
            return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DigestError):
        return str(exc)
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        # A hard time limit or a shutdown: the exit code means nothing to an operator.
        return "the worker process was stopped while the batch was sending"
    return f"{type(exc).__name__}: {exc}"


def _send_batch(session: Session, owned: list[int], transport: Transport | None,
                settings: Settings, result: BatchResult, recorder: states.Recorder,
                clock: Callable[[], datetime], limiter: Limiter | None,
                journal: states.AcceptanceJournal) -> None:
    deliveries = load_batch(session, owned)
    leavers = _Leavers(session, [d for d, _ in deliveries], recorder.token)
    # Loaded once; a pause that starts during the batch is added to it by _send_one.
    pauses = active_pauses(session, {recipient_domain(d.email) for d, _ in deliveries}, clock())
    if limiter is None:
        _send_allowed(session, deliveries, transport, settings, result, recorder, clock,
                      leavers, pauses, journal)
        return
    holder = new_holder()
    deliveries = _within_limits(deliveries, limiter, holder, pauses, settings, result,
                                recorder, clock)
    try:
        _send_allowed(session, deliveries, transport, settings, result, recorder, clock,
                      leavers, pauses, journal)
    finally:
        limiter.release({recipient_domain(d.email) for d, _ in deliveries}, holder)


def _within_limits(deliveries: list[tuple[LoadedDelivery, list[RenderItem]]],
                   limiter: Limiter, holder: str, pauses: dict[str, Pause], settings: Settings,
                   result: BatchResult, recorder: states.Recorder,
                   clock: Callable[[], datetime]) -> list[tuple[LoadedDelivery, list[RenderItem]]]:
    """The part of the batch the rate limits let go now (one ``take`` for the whole batch);
    the rest is deferred, its attempt given back, to when the limits allow, spaced at the
    rate, and listed in ``result.later`` by the second it is due."""
    by_domain: dict[str, list[tuple[LoadedDelivery, list[RenderItem]]]] = defaultdict(list)
    for entry in deliveries:
        by_domain[recipient_domain(entry[0].email)].append(entry)
    # A paused domain's rows are deferred by the pause, not counted against any limit.
    wanted = {d: len(rows) for d, rows in by_domain.items() if d not in pauses}
    if not wanted:
        return deliveries
    grant = limiter.take(wanted, holder, settings.lease_seconds)
    leftovers = {d: wanted[d] - grant.allowed.get(d, 0) for d in wanted
                 if wanted[d] > grant.allowed.get(d, 0)}
    if not leftovers:
        return deliveries
    now = clock()
    later: dict[datetime, list[int]] = defaultdict(list)
    deferred_ids: set[int] = set()
    for domain, delays in grant.delays(leftovers).items():
        rows = by_domain[domain][grant.allowed.get(domain, 0):]
        why = (f"{domain} has {limiter.limits.for_domain(domain).connections} workers sending "
               "to it already (DIGEST_DOMAIN_CONNECTIONS)" if domain in grant.busy
               else "the send rate is reached (DIGEST_SEND_RATE, DIGEST_DOMAIN_PER_MINUTE)")
        for (delivery, _), delay in zip(rows, delays, strict=True):
            due = now + timedelta(seconds=delay)
            recorder.add(delivery.id, states.DeferredWithoutAttempt(
                due, f"not sent yet: {why}; due again at {due:%H:%M:%S} UTC"))
            result.outcomes[delivery.id] = "deferred"
            result.deferred += 1
            deferred_ids.add(delivery.id)
            # Grouped by the whole second: one task a second, each due by then.
            later[due.replace(microsecond=0) + timedelta(seconds=1)].append(delivery.id)
    result.later = sorted(later.items())
    return [entry for entry in deliveries if entry[0].id not in deferred_ids]


def _send_allowed(session: Session, deliveries: list[tuple[LoadedDelivery, list[RenderItem]]],
                  transport: Transport | None, settings: Settings, result: BatchResult,
                  recorder: states.Recorder, clock: Callable[[], datetime], leavers: _Leavers,
                  pauses: dict[str, Pause], journal: states.AcceptanceJournal) -> None:
    # Built inside the put-back guard: a bad DKIM key or contradictory SMTP settings put the
    # batch back instead of leaving it in ``sending`` until the lease runs out.
    factory = MessageFactory(settings)
    conn = transport or kept_transport(settings)
    run_ids = {d.run_id for d, _ in deliveries}
    # The connection opens on the first send: a batch that only meets paused domains
    # never contacts the server.
    with conn:
        for delivery, items in deliveries:
            # Every line written while this message is handled names it (digest.logs; 4 us).
            ids = bind_ids(run_id=delivery.run_id, delivery_id=delivery.id)
            try:
                outcome = _send_one(session, conn, factory, delivery, items, leavers,
                                    settings, pauses, clock, recorder, journal)
            finally:
                reset_ids(ids)
            result.outcomes[delivery.id] = outcome
            setattr(result, outcome, getattr(result, outcome) + 1)
    recorder.flush()
    for run_id in run_ids:
        states.finish_run_if_done(session, run_id)
    session.commit()
    # One line a batch, not one a message: the log is the deliveries table.
    log.info("batch sent", run_id=min(run_ids) if len(run_ids) == 1 else sorted(run_ids),
             claimed=result.claimed, sent=result.sent, deferred=result.deferred,
             failed=result.failed, cancelled=result.cancelled, lost=result.lost)


class _Leavers:
    """Who of a batch has left (unsubscribed, suppressed) since it was planned, read again at
    most every ``RECHECK_SECONDS`` while the batch is sending: one query a second, not one a
    message, and a reader who leaves mid-batch is mailed at most that long afterwards.

    The same read says which rows this batch still holds (``sending`` under its claim
    token): a worker that froze past its lease and resumed finds the rows another worker
    took over, and does not send them."""

    RECHECK_SECONDS = 1.0

    def __init__(self, session: Session, deliveries: Sequence[LoadedDelivery], token: str):
        self.session = session
        self.token = token
        self.ids = {d.id for d in deliveries}
        self.held: set[int] = set()
        self.subscriber_ids = {d.subscriber_id for d in deliveries}
        self.emails = {d.email for d in deliveries}
        self.read_at = float("-inf")  # read on first use, whatever the monotonic clock says
        self.status: dict[int, str] = {}
        self.suppressed: set[str] = set()

    def lost(self, delivery: LoadedDelivery) -> bool:
        """Whether another worker holds this row now (our claim was taken back)."""
        if time.monotonic() - self.read_at >= self.RECHECK_SECONDS:
            self._read()
        return delivery.id not in self.held

    def why_not(self, delivery: LoadedDelivery) -> str | None:
        """None while the reader may be mailed; else the note of the cancellation."""
        if time.monotonic() - self.read_at >= self.RECHECK_SECONDS:
            self._read()
        status = self.status.get(delivery.subscriber_id, "erased")
        if status != SubscriberStatus.active:
            return f"cancelled: subscriber is {status}"
        if delivery.email in self.suppressed:
            return "cancelled: address suppressed"
        return None

    def _read(self) -> None:
        self.status = {sub_id: status for sub_id, status in self.session.execute(
            select(Subscriber.id, Subscriber.status).where(Subscriber.id.in_(self.subscriber_ids)))}
        self.suppressed = set(self.session.scalars(
            select(Suppression.email).where(Suppression.email.in_(self.emails))))
        self.held = set(self.session.scalars(
            select(Delivery.id).where(Delivery.id.in_(self.ids),
                                      Delivery.status == DeliveryStatus.sending,
                                      Delivery.claim_token == self.token)))
        self.session.commit()  # end the read's transaction: the next read sees new commits
        self.read_at = time.monotonic()


def _send_one(session: Session, conn: Transport, factory: MessageFactory,
              delivery: LoadedDelivery,
              items: list[RenderItem], leavers: _Leavers, settings: Settings,
              pauses: dict[str, Pause], clock: Callable[[], datetime],
              recorder: states.Recorder, journal: states.AcceptanceJournal) -> str:
    if leavers.lost(delivery):
        log.warning("claim taken over by another worker: not sent", delivery_id=delivery.id)
        return "lost"
    # Checked again at send time: someone may have left after the run was planned.
    note = leavers.why_not(delivery)
    if note is not None:
        recorder.add(delivery.id, states.Cancelled(note))
        return "cancelled"
    if pauses:
        domain = recipient_domain(delivery.email)
        pause = pauses.get(domain)
        if pause is not None and pause.until > clock():
            recorder.add(delivery.id, states.DeferredWithoutAttempt(
                pause.until,
                f"not sent: {domain} is paused until {pause.until:%Y-%m-%dT%H:%M:%SZ} after "
                f"it refused us: {pause.reason}"))
            return "deferred"
    try:
        message_id, data = factory.build(delivery, delivery.run, items)
    except ConfigError:
        raise  # a template or key that fails is ours: the whole batch goes back
    except DigestError as exc:
        # This reader's data cannot make a valid message (e.g. a header with CR/LF): never
        # sent half-right, and nobody is suppressed for it.
        recorder.add(delivery.id, states.FailedWithoutSending(f"not sent: {exc}"))
        return "failed"
    # Outcomes never wait longer than DIGEST_RECORD_MS because one server reply was slow.
    recorder.flush_if_due()
    try:
        reply = conn.send(factory.return_path(delivery.id), delivery.email, data)
    except DeliveryError as exc:
        return _refused(session, delivery, exc, message_id, pauses, settings, clock, recorder)
    except ConfigError:
        raise  # login refused, untrusted certificate...: the whole batch goes back
    except DigestError as exc:  # an address the transport cannot carry (SMTPUTF8 off)
        recorder.add(delivery.id, states.FailedWithoutSending(f"not sent: {exc}", message_id))
        return "failed"
    accepted_at = clock()
    try:
        # Durable now, before the group commits: recovery never sends this one again.
        journal.write(delivery.id, reply.code, reply.reply, message_id, accepted_at)
    finally:
        recorder.add(delivery.id, states.Sent(reply.code, reply.reply, message_id,
                                              accepted_at))
    return "sent"


def _refused(session: Session, delivery: LoadedDelivery, exc: DeliveryError, message_id: str,
             pauses: dict[str, Pause], settings: Settings, clock: Callable[[], datetime],
             recorder: states.Recorder) -> str:
    """What a refusal means, by whose fault it is (``classify_smtp``)."""
    if isinstance(exc, PermanentDeliveryError) and exc.code is None:
        # Refused before any command (e.g. the server cannot carry this address): this
        # recipient only, with the reason; nobody is suppressed.
        recorder.add(delivery.id, states.FailedWithoutSending(str(exc), message_id))
        return "failed"
    verdict = classify_smtp(exc.code, exc.reply, exc.step)
    # A refusal is the exception, worth its own line (run_id and delivery_id are bound).
    log.warning("delivery refused", smtp_code=exc.code, fault=str(verdict.fault),
                reason=verdict.reason, attempts=delivery.attempts)
    if verdict.fault is Fault.message:
        # This message, not the reader nor our set-up (a size refusal): it fails alone.
        recorder.add(delivery.id, states.FailedForGood(
            f"{TOO_LARGE}: {exc}; {verdict.reason}", exc.code, exc.reply, message_id))
        return "failed"
    if verdict.fault is Fault.sender:
        raise _SenderRefused(f"{exc} ({verdict.reason})")
    if verdict.fault is Fault.policy:
        domain = recipient_domain(delivery.email)
        now = clock()
        reply = exc.reply or str(exc)
        until = pause_domain(session, domain,
                             now + timedelta(minutes=settings.policy_pause_minutes),
                             reply, delivery_id=delivery.id, now=now)
        pauses[domain] = Pause(until, reply)
        outcome = states.retry_or_give_up(delivery.attempts, settings, str(exc), until,
                                          smtp_code=exc.code, smtp_reply=exc.reply,
                                          message_id=message_id)
        # Same transaction as the pause (the flush commits): both or neither.
        recorder.flush_with(delivery.id, outcome)
        return str(outcome.status)
    if verdict.fault is Fault.hard:
        suppress(session, delivery.email, SuppressionReason.hard_bounce, str(exc))
        # The failed row and the suppression commit together.
        recorder.flush_with(delivery.id, states.FailedForGood(str(exc), exc.code, exc.reply,
                                                              message_id))
        return "failed"
    if verdict.permanent:
        # Permanent, but nothing says the mailbox is gone: fail this one, keep the address.
        recorder.add(delivery.id, states.FailedForGood(str(exc), exc.code, exc.reply,
                                                       message_id))
        return "failed"
    outcome = states.retry_or_give_up(
        delivery.attempts, settings, str(exc),
        clock() + states.retry_delay(delivery.attempts, settings),
        smtp_code=exc.code, smtp_reply=exc.reply, message_id=message_id)
    recorder.add(delivery.id, outcome)
    return str(outcome.status)
