"""Delivery: claim planned rows, render, build and send each message, record the outcome.

State machine of a ``deliveries`` row::

    pending --claim--> sending --250--> sent
                          |----4xx / dropped connection--> deferred --(due)--> sending ...
                          |----5xx---------------------> failed   (5.1.x also suppresses)
                          |----5.7.x at RCPT TO/DATA---> deferred until the domain's pause ends
    pending/deferred --subscriber left or suppressed--> cancelled
    pending/deferred --its domain is paused--> deferred until the pause ends (not an attempt)

A policy refusal (5.7.x: a block list, a reputation filter) is about us, not the address:
the address is kept, and the recipient's domain is paused (``domain_pauses``) for
``policy_pause_minutes``, so the rest of the batch and later batches do not knock again on a
receiver that blocks us.

A claim is a conditional UPDATE, so a task that runs twice (redelivered by the broker, or
retried after a worker was lost) finds nothing left to claim and sends nothing twice. A
claim holds a lease; a worker that dies mid-batch leaves rows in ``sending`` that
``recover_expired_leases`` puts back as deferred. The database, not the broker, is the
record of what was sent.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import case, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, selectinload

from digest import db
from digest.errors import (
    ConfigError,
    DeliveryError,
    DigestError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from digest.mail import DkimSigner, build_message, make_message_id
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    DomainPause,
    Item,
    RunKind,
    RunStatus,
    Subscriber,
    SubscriberFilter,
    SubscriberStatus,
    Suppression,
    utcnow,
)
from digest.render import (
    Recipient,
    RenderedEmail,
    RenderItem,
    get_renderer,
    render_items_from_models,
)
from digest.select import delivery_contents
from digest.settings import Settings, get_settings
from digest.tokens import links_for, make_token
from digest.transport import Transport, transport_from_settings

CLAIMABLE = (DeliveryStatus.pending.value, DeliveryStatus.deferred.value)
UNFINISHED = (DeliveryStatus.pending.value, DeliveryStatus.sending.value, DeliveryStatus.deferred.value)
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    cancelled: int = 0
    outcomes: dict[int, str] = field(default_factory=dict)


def enhanced_status(reply: str) -> str | None:
    """The RFC 3463 enhanced status code in an SMTP reply ("5.1.1"), if any."""
    match = _ENHANCED.search(reply or "")
    return ".".join(match.groups()) if match else None


def is_unknown_user(reply: str | None) -> bool:
    """5.1.x: the address does not exist; 5.7.x (policy) is not the address's fault."""
    code = enhanced_status(reply or "")
    return bool(code and code.startswith("5.1."))


def refused_reply(exc: DeliveryError) -> str | None:
    """The server's reply in a refusal at RCPT TO or DATA ("550 5.7.1 ..."); None for a
    refusal of the session or of MAIL FROM, which is about our server, not the recipient's."""
    return exc.reply if exc.step in ("RCPT TO", "DATA") else None


def is_policy_refusal(reply: str | None) -> bool:
    """5.7.x: the receiver refuses us on policy grounds (block list, reputation, DMARC)."""
    code = enhanced_status(reply or "")
    return bool(code and code.startswith("5.7."))


def recipient_domain(email: str) -> str:
    """The key of a domain pause: the part after the last '@', lower-case, as stored."""
    return email.strip().rpartition("@")[2].strip().rstrip(".").lower()


@dataclass(frozen=True)
class Pause:
    until: datetime
    reason: str


def active_pauses(session: Session, domains: set[str], now: datetime) -> dict[str, Pause]:
    """The domains among ``domains`` paused at ``now``: one query for a whole batch."""
    if not domains:
        return {}
    rows = session.execute(select(DomainPause.domain, DomainPause.paused_until, DomainPause.reason)
                           .where(DomainPause.domain.in_(domains), DomainPause.paused_until > now))
    return {domain: Pause(until, reason) for domain, until, reason in rows}


def pause_domain(session: Session, domain: str, until: datetime, reason: str, *,
                 delivery_id: int | None = None, now: datetime | None = None) -> datetime:
    """Pause ``domain`` until ``until`` (a pause already running longer is kept); returns
    when the pause ends. One upsert, so two workers refused at once leave one row."""
    now = now or utcnow()
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise ConfigError(f"domain pauses need PostgreSQL or SQLite, not {dialect}")
    table = DomainPause.__table__
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(
        domain=recipient_domain(domain), paused_until=until, reason=reason, created_at=now,
        delivery_id=delivery_id)
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.domain], set_={
        "paused_until": case((table.c.paused_until > new.paused_until, table.c.paused_until),
                             else_=new.paused_until),
        "reason": new.reason,
        "delivery_id": new.delivery_id,
        # A pause that had run out is over: this one starts now.
        "created_at": case((table.c.paused_until <= now, new.created_at),
                           else_=table.c.created_at),
    }).returning(table.c.paused_until)
    return session.execute(stmt).scalar_one()


def _domain_forms(domain: str) -> list[str]:
    """The key of ``domain`` and its other IDNA form (xn--... or Unicode), if it has one."""
    key = recipient_domain(domain)
    forms = [key]
    try:
        other = key.encode("idna").decode("ascii") if not key.isascii() else (
            key.encode("ascii").decode("idna") if "xn--" in key else key)
    except UnicodeError:
        other = key
    if other.lower() != key:
        forms.append(other.lower())
    return forms


def resume_domain(session: Session, domain: str,
                  now: datetime | None = None) -> tuple[str, int] | None:
    """Lift a domain's pause now (the caller commits). Its deliveries that were waiting for
    the pause become due now, for the retry task to send. Returns (the domain as stored,
    how many deliveries were made due), or None when the domain has no pause."""
    now = now or utcnow()
    pause = session.scalars(select(DomainPause).where(
        DomainPause.domain.in_(_domain_forms(domain)))).first()
    if pause is None:
        return None
    table = Delivery.__table__
    due = session.execute(
        update(table)
        .where(table.c.status == DeliveryStatus.deferred.value,
               table.c.email.endswith(f"@{pause.domain}", autoescape=True),
               table.c.next_attempt_at > now, table.c.next_attempt_at <= pause.paused_until)
        .values(next_attempt_at=now, updated_at=now)).rowcount or 0
    key = pause.domain
    session.delete(pause)
    session.flush()
    return key, due


def retry_delay(attempts: int, settings: Settings) -> timedelta:
    return timedelta(seconds=min(settings.retry_base_seconds * 2 ** max(attempts - 1, 0), 6 * 3600))


def claim(session: Session, delivery_ids: list[int], now: datetime, settings: Settings) -> list[int]:
    """Move due pending/deferred rows to ``sending`` under a lease; returns the ids we own."""
    if not delivery_ids:
        return []
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.status.in_(CLAIMABLE),
               (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now),
               # A dry run's rows say what would be sent; nothing ever sends them.
               ~exists().where(DigestRun.id == Delivery.run_id, DigestRun.dry_run))
        .values(status=DeliveryStatus.sending.value, attempts=Delivery.attempts + 1,
                lease_until=now + timedelta(seconds=settings.lease_seconds), updated_at=now)
        .returning(Delivery.id)
    )
    return sorted(session.scalars(stmt).all())


def _view_url(settings: Settings, delivery_id: int) -> str:
    return f"{settings.public_base_url.rstrip('/')}/view/{make_token('view', {'d': delivery_id}, settings)}"


class MessageFactory:
    """Everything that is the same for every message of a batch is prepared once here."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dkim = DkimSigner.from_settings(settings)
        self.domain = settings.from_domain
        self.feedback_id = f"digest:{settings.list_id.split('<')[-1].strip('> ')}:newsroom"

    def render(self, delivery: Delivery, run: DigestRun, items: Sequence[RenderItem], *,
               in_browser: bool = False, links: dict[str, str] | None = None) -> RenderedEmail:
        """The personal part: the reader's links, choices and items in the run's template."""
        s = self.settings
        sub = delivery.subscriber
        links = links or links_for(sub.id, s)
        themes = tuple(dict.fromkeys(t.name for f in sub.filters for t in f.themes))
        places = tuple(dict.fromkeys(loc.name for f in sub.filters for loc in f.locations))
        recipient = Recipient(subscriber_id=sub.id, email=delivery.email, group_by=sub.group_by,
                              manage_url=links["manage_url"], unsubscribe_url=links["unsubscribe_url"],
                              view_url=None if in_browser else _view_url(s, delivery.id),
                              timezone=sub.timezone, themes=themes, locations=places)
        template = "alert" if run.kind == RunKind.immediate.value and len(items) == 1 else "digest"
        context = {}
        dates = [it.published_at.date() for it in items if it.published_at]
        if template == "digest":
            context["more_url"] = self.more_url(themes, places)
            if dates:
                context |= {"period_start": min(dates), "period_end": max(dates)}
        return get_renderer(template, s).render(recipient, items, **context)

    def build(self, delivery: Delivery, run: DigestRun,
              items: Sequence[RenderItem]) -> tuple[str, bytes]:
        """(Message-ID, the bytes to send) for one delivery, signed when DKIM is configured."""
        s = self.settings
        links = links_for(delivery.subscriber_id, s)  # signed once, used in body and headers
        rendered = self.render(delivery, run, items, links=links)
        unsubscribe_url = links["unsubscribe_url"]
        # Stable per delivery: a retried send carries the same Message-ID.
        message_id = make_message_id(f"digest.{run.id}.{delivery.id}", self.domain)
        data = build_message(
            from_addr=s.from_address, to_addr=delivery.email, subject=rendered.subject,
            html=rendered.html, text=rendered.text, message_id=message_id, list_id=s.list_id,
            unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=f"mailto:unsubscribe@{self.domain}?subject=unsubscribe%20{delivery.subscriber_id}",
            feedback_id=self.feedback_id, reply_to=s.reply_to,
            extra_headers={"X-Digest-Delivery": str(delivery.id)}, smtputf8=s.smtputf8,
        )
        if self.dkim is not None:
            data = self.dkim.sign(data)
        return message_id, data

    def more_url(self, themes: tuple[str, ...], places: tuple[str, ...]) -> str:
        """The newsroom listing filtered to the reader's choices ("and K more")."""
        query = urlencode([("theme", t) for t in themes] + [("location", p) for p in places])
        return f"{self.settings.newsroom_url}?{query}" if query else self.settings.newsroom_url

    def return_path(self, delivery_id: int) -> str:
        # VERP: a bounce to this address names its delivery.
        return f"bounces+{delivery_id}@{self.domain}"


def _load(session: Session, ids: list[int]) -> list[tuple[Delivery, list[RenderItem]]]:
    """The claimed deliveries with what each carries, in a fixed number of queries.

    The items of a batch are mostly shared (a digest run sends the same week's news to
    everyone), so each item is loaded and snapshotted once per batch, not once per message.
    """
    deliveries = session.scalars(
        select(Delivery).where(Delivery.id.in_(ids)).order_by(Delivery.id)
        .options(selectinload(Delivery.subscriber).selectinload(Subscriber.filters)
                 .selectinload(SubscriberFilter.themes),
                 selectinload(Delivery.subscriber).selectinload(Subscriber.filters)
                 .selectinload(SubscriberFilter.locations),
                 selectinload(Delivery.run))
    ).all()
    contents = delivery_contents()
    carried = session.execute(
        select(contents.c.delivery_id, contents.c.item_id).where(contents.c.delivery_id.in_(ids))
    ).all()
    items = session.scalars(
        select(Item).where(Item.id.in_({item_id for _, item_id in carried}))
        .options(selectinload(Item.themes), selectinload(Item.locations),
                 selectinload(Item.content_type))
    ).all()
    snapshots = dict(zip((it.id for it in items), render_items_from_models(items)))
    per_delivery: dict[int, list[RenderItem]] = defaultdict(list)
    for delivery_id, item_id in carried:
        per_delivery[delivery_id].append(snapshots[item_id])
    return [(d, per_delivery[d.id]) for d in deliveries]


def render_delivery(session: Session, delivery_id: int, *, in_browser: bool = False,
                    settings: Settings | None = None) -> RenderedEmail | None:
    """A delivery's subject, HTML and text as they are (or would be) mailed, from the same
    code that sends them; None if there is no such delivery or it carries nothing. Works for
    a dry run's rows: that is how an operator previews an ad-hoc send before making it."""
    loaded = _load(session, [delivery_id])
    if not loaded or not loaded[0][1]:
        return None
    delivery, items = loaded[0]
    return MessageFactory(settings or get_settings()).render(
        delivery, delivery.run, items, in_browser=in_browser)


def render_for_browser(session: Session, delivery_id: int,
                       settings: Settings | None = None) -> str | None:
    """The HTML of a delivery as it was mailed ("view in your browser"); None if it carried
    nothing."""
    rendered = render_delivery(session, delivery_id, in_browser=True, settings=settings)
    return rendered.html if rendered else None


def _record(session: Session, delivery_id: int, **values) -> None:
    """Write one outcome and commit it at once: the row, not the broker, says what was sent."""
    values.setdefault("updated_at", utcnow())
    table = Delivery.__table__  # Core UPDATE: no ORM session synchronisation per message
    session.execute(update(table).where(table.c.id == delivery_id,
                                        table.c.status == DeliveryStatus.sending.value)
                    .values(lease_until=None, **values))
    session.commit()


def send_deliveries(delivery_ids: list[int], *, transport: Transport | None = None,
                    now: datetime | None = None, settings: Settings | None = None) -> BatchResult:
    """Claim, render, send and record a batch over one SMTP connection. Safe to run twice."""
    settings = settings or get_settings()
    now = now or utcnow()
    # The batch's clock: ``now`` as given (tests move it), advancing with real time.
    offset = now - utcnow()
    result = BatchResult()
    session = db._sessionmaker(settings.database_url)()
    try:
        owned = claim(session, list(delivery_ids), now, settings)
        session.commit()
        result.claimed = len(owned)
        if not owned:
            return result
        deliveries = _load(session, owned)
        suppressed = set(session.scalars(
            select(Suppression.email).where(Suppression.email.in_({d.email for d, _ in deliveries}))))
        # Loaded once; a pause that starts during the batch is added to it by _send_one.
        pauses = active_pauses(session, {recipient_domain(d.email) for d, _ in deliveries}, now)
        factory = MessageFactory(settings)
        run_ids = {d.run_id for d, _ in deliveries}
        # The connection opens on the first send: a batch that only meets paused domains
        # never contacts the server.
        with (transport or transport_from_settings(settings)) as conn:
            for delivery, items in deliveries:
                try:
                    outcome = _send_one(session, conn, factory, delivery, items, suppressed,
                                        settings, pauses, lambda: utcnow() + offset)
                except ConfigError as exc:
                    # The SMTP set-up is wrong, not the recipient: every row not yet sent goes
                    # back, due later, with the reason in the log; the error reaches the operator.
                    _put_back(session, [d for d, _ in deliveries if d.id not in result.outcomes],
                              f"not sent: {exc}", settings)
                    raise
                result.outcomes[delivery.id] = outcome
                setattr(result, outcome, getattr(result, outcome) + 1)
        for run_id in run_ids:
            finish_run_if_done(session, run_id)
        session.commit()
        return result
    finally:
        session.close()


def _retry_or_give_up(delivery: Delivery, settings: Settings, reason: str,
                      next_attempt_at: datetime, **values) -> dict:
    """The outcome of a try that may be repeated: deferred to ``next_attempt_at``, or failed
    once the delivery has used its ``max_attempts``."""
    if delivery.attempts >= settings.max_attempts:
        return {"status": DeliveryStatus.failed.value,
                "smtp_reply": f"gave up after {delivery.attempts} attempts: {reason}", **values}
    return {"status": DeliveryStatus.deferred.value, "smtp_reply": reason,
            "next_attempt_at": next_attempt_at, **values}


def _put_back(session: Session, deliveries: list[Delivery], reason: str, settings: Settings) -> None:
    now = utcnow()
    table = Delivery.__table__
    for delivery in deliveries:
        values = _retry_or_give_up(delivery, settings, reason,
                                   now + retry_delay(delivery.attempts, settings))
        session.execute(update(table).where(table.c.id == delivery.id,
                                            table.c.status == DeliveryStatus.sending.value)
                        .values(lease_until=None, updated_at=now, **values))
    session.commit()


def _send_one(session: Session, conn: Transport, factory: MessageFactory, delivery: Delivery,
              items: list[RenderItem], suppressed: set[str], settings: Settings,
              pauses: dict[str, Pause] | None = None,
              clock: Callable[[], datetime] = utcnow) -> str:
    from digest.subscribers import suppress

    pauses = {} if pauses is None else pauses

    sub = delivery.subscriber
    # Checked again at send time: someone may have left after the run was planned.
    if sub.status != SubscriberStatus.active.value or delivery.email in suppressed:
        _record(session, delivery.id, status=DeliveryStatus.cancelled.value,
                smtp_reply=f"cancelled: subscriber is {sub.status}"
                if sub.status != SubscriberStatus.active.value else "cancelled: address suppressed")
        return "cancelled"
    domain = recipient_domain(delivery.email)
    pause = pauses.get(domain)
    if pause is not None and pause.until > clock():
        # Not contacted at all, and not an attempt: the claim's increment is taken back, so
        # a long pause never makes a delivery run out of attempts.
        table = Delivery.__table__
        _record(session, delivery.id, status=DeliveryStatus.deferred.value,
                next_attempt_at=pause.until, attempts=table.c.attempts - 1,
                smtp_reply=f"not sent: {domain} is paused until "
                           f"{pause.until:%Y-%m-%dT%H:%M:%SZ} after it refused us: {pause.reason}")
        return "deferred"
    try:
        message_id, data = factory.build(delivery, delivery.run, items)
    except DigestError as exc:
        # A message we cannot build (e.g. a header with CR/LF) is never sent half-right.
        _record(session, delivery.id, status=DeliveryStatus.failed.value, smtp_reply=f"not sent: {exc}")
        return "failed"
    try:
        reply = conn.send(factory.return_path(delivery.id), delivery.email, data)
    except TemporaryDeliveryError as exc:
        outcome = _retry_or_give_up(delivery, settings, str(exc),
                                    utcnow() + retry_delay(delivery.attempts, settings),
                                    smtp_code=exc.code, message_id=message_id)
        _record(session, delivery.id, **outcome)
        return outcome["status"]
    except PermanentDeliveryError as exc:
        # Read the code from the server's reply only: a host or address in the rest of the
        # message ("10.5.1.1") must not look like an enhanced status.
        reply = refused_reply(exc)
        if is_policy_refusal(reply):
            return _policy_refused(session, delivery, exc, reply, message_id, pauses,
                                   clock(), settings)
        _record(session, delivery.id, status=DeliveryStatus.failed.value, smtp_code=exc.code,
                smtp_reply=str(exc), message_id=message_id)
        # Only the server's answer to RCPT TO or DATA speaks about the recipient: 5.1.x at
        # MAIL FROM is about our sender, and a refusal made here has no reply at all.
        if is_unknown_user(reply):
            suppress(session, delivery.email, "hard_bounce", str(exc))
            session.commit()
        return "failed"
    _record(session, delivery.id, status=DeliveryStatus.sent.value, smtp_code=reply.code,
            smtp_reply=reply.reply, message_id=message_id, sent_at=utcnow(), next_attempt_at=None)
    return "sent"


def _policy_refused(session: Session, delivery: Delivery, exc: PermanentDeliveryError, reply: str,
                    message_id: str, pauses: dict[str, Pause], now: datetime,
                    settings: Settings) -> str:
    """5.7.x: pause the domain, keep the address, try this delivery again when the pause ends."""
    domain = recipient_domain(delivery.email)
    until = pause_domain(session, domain, now + timedelta(minutes=settings.policy_pause_minutes),
                         reply, delivery_id=delivery.id, now=now)
    pauses[domain] = Pause(until, reply)
    outcome = _retry_or_give_up(delivery, settings, str(exc), until, smtp_code=exc.code,
                                message_id=message_id)
    # Same transaction as the pause (``_record`` commits): both or neither.
    _record(session, delivery.id, **outcome)
    return outcome["status"]


def finish_run_if_done(session: Session, run_id: int) -> bool:
    open_rows = session.scalar(select(func.count()).where(Delivery.run_id == run_id,
                                                          Delivery.status.in_(UNFINISHED)))
    if open_rows:
        return False
    session.execute(update(DigestRun).where(DigestRun.id == run_id,
                                            DigestRun.status != RunStatus.done.value)
                    .values(status=RunStatus.done.value, finished_at=utcnow()))
    return True


def due_for_retry(session: Session, now: datetime | None = None, limit: int = 10_000) -> list[int]:
    """Deferred deliveries whose next attempt is due (the periodic retry task sends them)."""
    now = now or utcnow()
    return list(session.scalars(
        select(Delivery.id).where(Delivery.status == DeliveryStatus.deferred.value,
                                  Delivery.next_attempt_at <= now).order_by(Delivery.id).limit(limit)))


def recover_expired_leases(session: Session, now: datetime | None = None) -> list[int]:
    """Rows left in ``sending`` by a worker that died go back to deferred, due now."""
    now = now or utcnow()
    return sorted(session.scalars(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.sending.value, Delivery.lease_until < now)
        .values(status=DeliveryStatus.deferred.value, next_attempt_at=now, lease_until=None,
                smtp_reply="lease expired: the worker stopped before recording a result",
                updated_at=now)
        .returning(Delivery.id)
    ).all())


def requeue_failed(session: Session, delivery_ids: list[int]) -> int:
    """An admin's second chance for failed deliveries (deferred, due now)."""
    now = utcnow()
    res = session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids),
                                                 Delivery.status == DeliveryStatus.failed.value)
                          .values(status=DeliveryStatus.deferred.value, next_attempt_at=now,
                                  attempts=0, updated_at=now))
    return res.rowcount or 0


def runs_progress(session: Session, run_ids: list[int]) -> dict[int, dict[str, int]]:
    """Delivery counts by status (and ``total``) for each run, in one grouped query."""
    counts: dict[int, dict[str, int]] = {run_id: {} for run_id in run_ids}
    for run_id, status, n in session.execute(
            select(Delivery.run_id, Delivery.status, func.count())
            .where(Delivery.run_id.in_(run_ids)).group_by(Delivery.run_id, Delivery.status)):
        counts[run_id][status] = n
    return {run_id: c | {"total": sum(c.values())} for run_id, c in counts.items()}


def describe_progress(progress: dict[str, int]) -> str:
    """``"5 total: deferred 1, sent 4"`` for the admin, the CLI and the logs."""
    parts = [f"{k} {v}" for k, v in sorted(progress.items()) if k != "total"]
    return f"{progress.get('total', 0)} total: " + ", ".join(parts) if parts else "no deliveries"


def run_progress(session: Session, run_id: int) -> dict[str, int]:
    return runs_progress(session, [run_id])[run_id]


def batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]
