"""Acting on a bounce: each recipient's verdict comes from ``digest.delivery.classify_dsn``.

- ``hard``: the address is suppressed (reason ``hard_bounce``) and a delivery already marked
  sent becomes failed (``digest.records.mark_bounced``).
- ``soft``: each delivery that soft-bounces counts once toward the subscriber's
  ``soft_bounces``, the digests that soft-bounced within ``settings.soft_bounce_window_days``;
  at ``settings.soft_bounce_threshold`` the address is suppressed (reason ``soft_bounces``).
- ``policy``: recorded and reported, never suppressed; the recipient domain is paused for
  ``settings.policy_pause_minutes`` as a 5.7.x at SMTP time does (through a relay, the
  report is how a receiver's block list reaches us).
- ``sender``: about our sender or set-up (5.1.7/5.1.8, "sender rejected", a provider's own
  list): recorded and logged for the operator; nothing changes for the reader.
- ``none`` (delivered, relayed, a delay warning): nothing.

Every bounce is a ``bounces`` row, unique on (delivery, status code, hash of the report's
machine-readable part): the same report again, from a re-read mailbox or a retried webhook,
records and changes nothing. A message that is no bounce, or names no delivery of ours, is
"unmatched". With ``dry_run`` nothing is written: the outcome says what would be done.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from digest.addresses import lookup_form
from digest.bounces.arf import FeedbackReport
from digest.bounces.parse import (
    DIAGNOSTIC_LIMIT,
    DeliveryStatusReport,
    RecipientStatus,
    parse_report,
    read_message,
    verp_ids,
)
from digest.models import Bounce, Delivery, Fault, Subscriber, SuppressionReason, utcnow
from digest.records import mark_bounced, pause_domain, recipient_domain
from digest.records.suppressions import suppress
from digest.settings import Settings

log = logging.getLogger(__name__)

RECORDED, DUPLICATE, UNMATCHED = "recorded", "duplicate", "unmatched"
_WORST_FIRST = {Fault.hard: 0, Fault.policy: 1, Fault.sender: 2, Fault.soft: 3}


@dataclass
class BounceOutcome:
    """What processing one message did (or, in a dry run, would do)."""

    result: str  # recorded | duplicate | unmatched
    reason: str
    kind: Fault | None = None  # the classifier's verdict; never Fault.none
    delivery_id: int | None = None
    email: str | None = None
    status_code: str | None = None
    diagnostic: str = ""
    matched_by: str | None = None  # verp | message-id | x-digest-delivery
    suppressed: bool = False
    # Every recipient the bounce names: {"address", "status", "class"}.
    recipients: list[dict[str, str | None]] = field(default_factory=list)
    dry_run: bool = False
    complaint: bool = False  # a reader's complaint (ARF, a provider's event), not a bounce

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_bounce_message(session: Session, raw: bytes, *, envelope_to: str | None = None,
                           settings: Settings,
                           dry_run: bool = False) -> BounceOutcome:
    """Record one bounce message and act on it; the caller commits.

    ``envelope_to`` is the envelope recipient when the caller knows it (a webhook whose
    provider passes it apart from the message); it is tried as a VERP address first.
    Raises BounceError for input that is not a readable message (nothing is written).
    """
    from digest.bounces.arf import parse_feedback
    from digest.bounces.complaints import process_complaint
    from digest.bounces.providers import process_event, ses_complaint_in_mail
    from digest.bounces.text import body_text

    feedback = parse_feedback(raw)
    if feedback is not None:
        return process_complaint(session, feedback, extra_verp=verp_ids_of(envelope_to),
                                 dry_run=dry_run)
    # SES's complaint notification by mail: matched as a bounce by mail is (no recipient).
    ses = ses_complaint_in_mail(body_text(read_message(raw)))
    if ses:
        return process_event(session, ses[0], settings=settings, dry_run=dry_run,
                             authenticated=False)
    report = parse_report(raw)
    if report is None:
        return BounceOutcome(UNMATCHED, "not a bounce (no delivery-status report, no failure "
                             "notice): nothing to do", dry_run=dry_run)
    return act_on_report(session, report, extra_verp=verp_ids_of(envelope_to),
                         settings=settings, dry_run=dry_run)


def act_on_report(session: Session, report: DeliveryStatusReport, *, extra_verp: list[int],
                  settings: Settings, dry_run: bool = False,
                  by_address: str | None = None) -> BounceOutcome:
    """Act on a bounce already read (from a message, or a provider's event); the caller
    commits. ``by_address``: see ``find_delivery``."""
    listed = [{"address": r.final_recipient or None, "status": r.status,
               "class": r.verdict.fault} for r in report.recipients]
    if not report.failures:
        return BounceOutcome(UNMATCHED, "the report has no failed recipient (delivered, "
                             "relayed or a delay warning): nothing to do", recipients=listed,
                             dry_run=dry_run)
    delivery, matched_by = find_delivery(session, report, extra_verp + report.verp_ids,
                                         by_address=by_address)
    if delivery is None:
        return BounceOutcome(UNMATCHED, "the report names no delivery of ours (no known VERP "
                             "address, Message-ID or X-Digest-Delivery): nothing to do",
                             recipients=listed, dry_run=dry_run)
    failure = _pick(report.failures, delivery.email)
    outcome = BounceOutcome(RECORDED, "", kind=failure.kind, delivery_id=delivery.id,
                            email=delivery.email, status_code=failure.status,
                            diagnostic=failure.diagnostic, matched_by=matched_by,
                            recipients=listed, dry_run=dry_run)
    detail = f"{failure.status or ''} {failure.diagnostic}".strip()
    if dry_run:
        if _recorded_before(session, delivery.id, failure, report):
            outcome.result, outcome.reason = DUPLICATE, "processed before: nothing would change"
        else:
            outcome.reason = _would(failure, delivery, settings)
        return outcome
    # Serialise bounces of one subscriber (PostgreSQL; SQLite writers are serial anyway).
    sub = session.scalars(select(Subscriber).where(Subscriber.id == delivery.subscriber_id)
                          .with_for_update()).one()
    diagnostic = failure.diagnostic
    if failure.final_recipient and failure.final_recipient != delivery.email:
        diagnostic = f"{diagnostic} (final recipient {failure.final_recipient})".strip()
    bounce_id = _insert_once(session, delivery_id=delivery.id, email=delivery.email,
                             status_code=failure.status or "", kind=failure.kind,
                             diagnostic=diagnostic[:DIAGNOSTIC_LIMIT],
                             report_hash=report.report_hash, created_at=utcnow())
    if bounce_id is None:
        outcome.result = DUPLICATE
        outcome.reason = "this report was processed before: nothing changed"
        return outcome
    if failure.kind is Fault.hard:
        suppress(session, delivery.email, SuppressionReason.hard_bounce, detail)
        mark_bounced(session, delivery.id, detail)
        outcome.suppressed = True
        outcome.reason = "the address does not exist: suppressed"
    elif failure.kind is Fault.soft:
        outcome.reason, outcome.suppressed = _count_soft(session, sub, delivery, bounce_id,
                                                         detail, settings)
    elif failure.kind is Fault.policy:
        domain = recipient_domain(delivery.email)
        now = utcnow()
        until = pause_domain(session, domain,
                             now + timedelta(minutes=settings.policy_pause_minutes),
                             f"bounce report: {detail}", delivery_id=delivery.id, now=now)
        outcome.reason = (f"refused by the receiving server's policy: reported, the address is "
                          f"not suppressed, {domain} is paused until {until:%Y-%m-%dT%H:%M:%SZ}; "
                          "check authentication and reputation")
    else:
        log.warning("bounce of delivery %s is about our sender or set-up, not %s: %s",
                    delivery.id, delivery.email, failure.verdict.reason)
        outcome.reason = (f"about our sender or set-up, not the reader: nothing changed for "
                          f"{delivery.email}; check the sending set-up ({failure.verdict.reason})")
    session.flush()
    return outcome


def verp_ids_of(envelope_to: str | None) -> list[int]:
    from email.message import Message

    return verp_ids(Message(), [envelope_to]) if envelope_to else []


def _would(failure: RecipientStatus, delivery: Delivery, settings: Settings) -> str:
    """What processing would do, in words (a dry run)."""
    if failure.kind is Fault.hard:
        return f"would suppress {delivery.email} and fail delivery #{delivery.id}"
    if failure.kind is Fault.soft:
        return (f"would count a soft bounce for {delivery.email} (suppressed at "
                f"{settings.soft_bounce_threshold} within {settings.soft_bounce_window_days} "
                "days)")
    if failure.kind is Fault.policy:
        return (f"would pause {recipient_domain(delivery.email)} for "
                f"{settings.policy_pause_minutes} minutes; {delivery.email} is not suppressed")
    return (f"would change nothing for {delivery.email} and tell the operator: "
            f"{failure.verdict.reason}")


def _recorded_before(session: Session, delivery_id: int, failure: RecipientStatus,
                     report: DeliveryStatusReport) -> bool:
    count = session.scalar(select(func.count()).select_from(Bounce).where(
        Bounce.delivery_id == delivery_id, Bounce.status_code == (failure.status or ""),
        Bounce.report_hash == report.report_hash))
    return bool(count)


def find_delivery(session: Session, report: DeliveryStatusReport | FeedbackReport,
                  verp_ids: list[int], *,
                  by_address: str | None = None) -> tuple[Delivery | None, str | None]:
    """The delivery a report names: its VERP ids, the returned Message-ID, the returned
    X-Digest-Delivery; then, only for a provider's authenticated event (``by_address``), the
    latest delivery sent to that address."""
    for delivery_id in verp_ids:
        delivery = session.get(Delivery, delivery_id)
        if delivery is not None:
            return delivery, "verp"
    if report.message_id_ids:
        run_id, delivery_id = report.message_id_ids
        delivery = session.get(Delivery, delivery_id)
        if (delivery is not None and delivery.run_id == run_id
                and (delivery.message_id is None
                     or delivery.message_id.lower() == (report.message_id or "").lower())):
            return delivery, "message-id"
    if report.header_id is not None:
        delivery = session.get(Delivery, report.header_id)
        if delivery is not None:
            return delivery, "x-digest-delivery"
    if by_address:
        reader = select(Subscriber.id).where(Subscriber.email == lookup_form(by_address))
        delivery = session.scalars(
            select(Delivery).where(Delivery.subscriber_id.in_(reader),
                                   Delivery.sent_at.is_not(None))
            .order_by(Delivery.sent_at.desc(), Delivery.id.desc()).limit(1)).first()
        if delivery is not None:
            return delivery, "recipient"
    return None, None


def _pick(failures: list[RecipientStatus], address: str) -> RecipientStatus:
    """The block about the address we sent to (any block if it was forwarded), worst first."""
    address = address.lower()
    own = [f for f in failures if address in (f.final_recipient, f.original_recipient)]
    # A failure always has a kind (``kind`` is None only for a delivered or delayed block).
    return sorted(own or failures, key=lambda f: _WORST_FIRST[cast(Fault, f.kind)])[0]


def _insert_once(session: Session, **values: object) -> int | None:
    """Insert the bounce unless the same one exists; its id, or None for a duplicate."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Bounce).values(**values).on_conflict_do_nothing().returning(Bounce.id)
    return session.scalar(stmt)


def _count_soft(session: Session, sub: Subscriber, delivery: Delivery, bounce_id: int,
                detail: str, settings: Settings) -> tuple[str, bool]:
    """(what happened, whether the address was suppressed now)."""
    # One digest that is delayed, then given up on, is one soft bounce, not two.
    earlier = session.scalar(select(func.count()).where(
        Bounce.delivery_id == delivery.id, Bounce.kind == Fault.soft, Bounce.id != bounce_id))
    if earlier:
        return "a soft bounce of a digest already counted: not counted again", False
    # Counted afresh from the reports of the window, not incremented: a reader whose mailbox
    # was full last spring starts from zero, and a re-count can never drift.
    since = utcnow() - timedelta(days=settings.soft_bounce_window_days)
    recent = session.scalar(
        select(func.count(func.distinct(Bounce.delivery_id)))
        .join(Delivery, Delivery.id == Bounce.delivery_id)
        .where(Delivery.subscriber_id == sub.id, Bounce.kind == Fault.soft,
               Bounce.created_at >= since))
    session.execute(update(Subscriber).where(Subscriber.id == sub.id).values(soft_bounces=recent))
    session.refresh(sub, ["soft_bounces"])
    threshold = settings.soft_bounce_threshold
    if sub.soft_bounces >= threshold:
        suppress(session, delivery.email, SuppressionReason.soft_bounces,
                  f"{sub.soft_bounces} soft bounces; last: {detail}")
        return f"soft bounce {sub.soft_bounces} of {threshold}: suppressed", True
    return f"soft bounce {sub.soft_bounces} of {threshold}: counted", False


