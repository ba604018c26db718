"""Bounces: read RFC 3464 delivery-status reports, tie each to its delivery, act on it.

A report (``multipart/report; report-type=delivery-status``) names the delivery it is
about in one of three ways, tried in this order:

1. the VERP address it was sent to, ``bounces+<delivery id>@<domain>`` (our Return-Path),
   found in Delivered-To, X-Original-To, Envelope-To, X-Envelope-To or To;
2. the Message-ID of the returned original, ``<digest.<run>.<delivery>@<domain>>``, in its
   ``text/rfc822-headers`` or ``message/rfc822`` part (for servers that reply to the
   From address or lose the VERP on the way);
3. the returned original's ``X-Digest-Delivery`` header.

A bounce written for people only (qmail, Exim's default, old gateways) has no report part;
when it comes from the mail system itself (MAILER-DAEMON or postmaster, or carries Exim's
X-Failed-Recipients) and quotes an SMTP reply ("550 5.1.1 ..."), the failure is read from its
text and it is tied to its delivery the same three ways, the Message-ID and X-Digest-Delivery
being looked up in the returned copy below the notice.

What a failed or delayed recipient means (kept conservative: only a clear "no such
address" removes anyone at once):

- ``hard``: 5.1.x, or 5.0.0 with a "user unknown"-like diagnostic. The address is
  suppressed (reason ``hard_bounce``) and a delivery already marked sent becomes failed.
- ``policy``: 5.7.x. The receiving server refused us (authentication, reputation, content
  rules), not the address: recorded and reported, never suppressed, and the recipient
  domain is paused for ``settings.policy_pause_minutes`` (``digest domains paused``).
- ``soft``: delayed, 4.x.x and every other 5.x.x (mailbox full, system errors). Each
  delivery that soft-bounces counts once toward the subscriber's ``soft_bounces``, which
  holds the digests that soft-bounced within ``settings.soft_bounce_window_days``; at
  ``settings.soft_bounce_threshold`` the address is suppressed (reason ``soft_bounces``).

Every bounce is a ``bounces`` row, unique on (delivery, status code, hash of the report's
machine-readable part): processing the same report again, from a re-read mailbox or a
retried webhook, records and changes nothing. A message that is not a delivery-status
report (an autoreply, a challenge) or that names no delivery of ours is "unmatched" and
changes nothing either.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.errors
import email.parser
import email.policy
import hashlib
import mailbox
import quopri
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from email.message import Message
from email.utils import getaddresses
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest import db
from digest.deliver import pause_domain, recipient_domain
from digest.errors import BounceError, DigestError, ValidationError
from digest.models import Bounce, Delivery, DeliveryStatus, Subscriber, utcnow
from digest.settings import Settings, get_settings
from digest.subscribers import suppress

HARD, SOFT, POLICY = "hard", "soft", "policy"
RECORDED, DUPLICATE, UNMATCHED = "recorded", "duplicate", "unmatched"
FORMATS = ("auto", "maildir", "mbox")
# A report that returns the whole digest is ~100 KB; anything far larger is not a bounce.
MAX_BOUNCE_BYTES = 5 * 1024 * 1024

_VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_VERP = re.compile(r"^bounces\+(\d{1,18})@", re.I)
_OUR_MESSAGE_ID = re.compile(r"<digest\.(\d{1,18})\.(\d{1,18})@[^<>\s]+>", re.I)
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_BASIC_REPLY = re.compile(r"\b([245])\d\d\b")
# 5.0.0 is "some permanent failure"; only these words make it an unknown address.
_UNKNOWN_USER = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|"
    r"(?:user|mailbox|recipient|address) (?:does not|doesn't) exist|"
    r"unknown recipient|invalid recipient|(?:mailbox|recipient) not found",
    re.I,
)
_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
# Plain-text bounces: who sends them, the reply they quote, where the returned copy starts.
_MAIL_SYSTEM_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
_PLAIN_REPLY = re.compile(
    r"\b(?P<basic>[45]\d\d)(?:[ -](?P<enhanced>[45]\.\d{1,3}\.\d{1,3}))?(?=[ \t:;,.-])")
_QMAIL_RECIPIENT = re.compile(r"(?m)^<([^<>\s@]+@[^<>\s]+)>:\s*$")
_RETURNED_COPY = re.compile(
    r"(?im)^-{2,}\s*(?:below this line is a copy of the message|this is a copy of the message"
    r"|original message|returned message)[^\n]*$")
_DIAGNOSTIC_LIMIT = 2000


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a delivery-status report."""

    final_recipient: str  # the address, lower-case ("" when the report leaves it out)
    original_recipient: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # enhanced status code, "5.1.1"
    diagnostic: str  # Diagnostic-Code without its type ("smtp; ")
    kind: str | None  # hard | soft | policy; None: not a failure


@dataclass(frozen=True)
class DeliveryStatusReport:
    """What a report says and which of our deliveries it may be about."""

    recipients: list[RecipientStatus]
    report_hash: str
    verp_ids: list[int]  # from the report's own headers, in header order
    message_id: str | None  # of the returned original, when it is one of ours
    message_id_ids: tuple[int, int] | None  # (run id, delivery id) from that Message-ID
    header_id: int | None  # X-Digest-Delivery of the returned original

    @property
    def failures(self) -> list[RecipientStatus]:
        return [r for r in self.recipients if r.kind]


@dataclass
class BounceOutcome:
    """What processing one message did."""

    result: str  # recorded | duplicate | unmatched
    reason: str
    kind: str | None = None  # hard | soft | policy
    delivery_id: int | None = None
    email: str | None = None
    status_code: str | None = None
    diagnostic: str = ""
    matched_by: str | None = None  # verp | message-id | x-digest-delivery
    suppressed: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BounceReport:
    """Totals of a mailbox run; ``outcomes`` and ``errors`` are keyed by the message's key."""

    processed: int = 0  # messages read
    hard: int = 0
    soft: int = 0
    policy: int = 0
    unmatched: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    outcomes: list[tuple[str, BounceOutcome]] = field(default_factory=list)

    @property
    def suppressed(self) -> list[str]:
        return [o.email for _, o in self.outcomes if o.suppressed and o.email]

    @property
    def policy_rejections(self) -> list[BounceOutcome]:
        return [o for _, o in self.outcomes if o.result == RECORDED and o.kind == POLICY]

    def summary(self) -> str:
        return (f"{self.processed} message(s): {self.hard} hard, {self.soft} soft, "
                f"{self.policy} policy, {self.unmatched} unmatched, {self.duplicates} already "
                f"processed, {len(self.errors)} unreadable; {len(self.suppressed)} address(es) "
                "suppressed")


# --- reading a report ----------------------------------------------------------------------


def classify(status: str, diagnostic: str = "", action: str = "failed") -> str | None:
    """``hard``, ``soft`` or ``policy`` for a failed/delayed recipient; None for success."""
    match = _ENHANCED.search(status or "")
    if not match:
        raise ValidationError(f"status {status!r} is not an enhanced status code such as 5.1.1")
    klass, subject, detail = (int(g) for g in match.groups())
    action = (action or "").lower()
    if klass == 2 or action in ("delivered", "relayed", "expanded"):
        return None
    if action == "delayed" or klass == 4:
        return SOFT
    if subject == 7:
        return POLICY
    if subject == 1 or (subject == 0 and detail == 0 and _UNKNOWN_USER.search(diagnostic or "")):
        return HARD
    return SOFT


def parse_report(raw: bytes) -> DeliveryStatusReport | None:
    """The delivery-status report in ``raw``, or None when the message is not one.

    Raises BounceError for empty or oversized input and for a report that claims to be a
    delivery-status report but carries no per-recipient status.
    """
    if not raw or not raw.strip():
        raise BounceError("the bounce message is empty")
    if len(raw) > MAX_BOUNCE_BYTES:
        raise BounceError(f"the bounce message is {len(raw)} bytes, more than the "
                          f"{MAX_BOUNCE_BYTES} a delivery-status report can be; not read")
    try:
        # compat32: raw strings and no header parsing that could trip over odd values.
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        report = _find_report(msg)
        if report is None:
            return _plain_text_bounce(msg)
        blocks = _status_blocks(report, raw)
        # Per-message fields come first and never carry Action or Status.
        recipients = [r for r in (_recipient(b) for b in blocks) if r is not None]
        returned = _returned_headers(report)
    except (email.errors.MessageError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise BounceError(f"the bounce message could not be parsed: {exc}") from exc
    if not recipients:
        raise BounceError(
            "the delivery-status report has no recipient block with an Action or Status; "
            "it is malformed (RFC 3464 section 2.3)"
        )
    # str(): a header with raw 8-bit bytes comes back as an email.header.Header.
    ours = _OUR_MESSAGE_ID.search(str(returned.get("Message-ID", ""))) if returned else None
    header_id = str(returned.get("X-Digest-Delivery", "")).strip() if returned else ""
    return DeliveryStatusReport(
        recipients=recipients,
        report_hash=_hash_blocks(blocks),
        verp_ids=_verp_ids(msg),
        message_id=ours.group(0) if ours else None,
        message_id_ids=(int(ours.group(1)), int(ours.group(2))) if ours else None,
        header_id=int(header_id) if header_id.isdigit() and len(header_id) <= 18 else None,
    )


def _plain_text_bounce(msg: Message) -> DeliveryStatusReport | None:
    """A bounce written for people only (qmail, Exim's default, old gateways): no RFC 3464
    part, so the failure is read from the text. Only a message from the mail system itself
    (MAILER-DAEMON/postmaster, or Exim's X-Failed-Recipients) that quotes an SMTP reply code
    counts; an autoreply or a person's mail never does."""
    sender = _address(str(msg.get("From", ""))).partition("@")[0]
    failed_header = _clean(str(msg.get("X-Failed-Recipients", "")))
    if sender not in _MAIL_SYSTEM_SENDERS and not failed_header:
        return None
    body = next((part for part in msg.walk() if part.get_content_type() == "text/plain"), None)
    if body is None:
        return None
    text = (body.get_payload(decode=True) or b"").decode(
        body.get_content_charset() or "utf-8", "replace")
    notice, _, original = _split_returned_copy(text)
    reply = _PLAIN_REPLY.search(notice)
    if reply is None:
        return None
    # The reply's own line and the indented lines that continue it.
    first, *rest = notice[reply.start():].splitlines()
    lines = [first]
    for line in rest:
        if not line[:1].isspace() or not line.strip():
            break
        lines.append(line)
    diagnostic = _clean(" ".join(lines))[:_DIAGNOSTIC_LIMIT]
    code = reply.group("enhanced") or f"{reply.group('basic')[0]}.0.0"
    status = _status(code, diagnostic, "failed")
    addresses = [a for _, a in getaddresses([failed_header])] if failed_header else \
        _QMAIL_RECIPIENT.findall(notice)
    recipients = [RecipientStatus(final_recipient=address.lower(), original_recipient="",
                                  action="failed", status=status, diagnostic=diagnostic,
                                  kind=classify(status, diagnostic, "failed"))
                  for address in (addresses or [""])]
    ours = _OUR_MESSAGE_ID.search(original)
    header_id = re.search(r"(?im)^X-Digest-Delivery:\s*(\d{1,18})\s*$", original)
    digest_text = "\n".join(f"{r.final_recipient} {r.status} {r.diagnostic}" for r in recipients)
    return DeliveryStatusReport(
        recipients=recipients,
        report_hash=hashlib.sha256(digest_text.encode("utf-8", "surrogateescape")).hexdigest(),
        verp_ids=_verp_ids(msg),
        message_id=ours.group(0) if ours else None,
        message_id_ids=(int(ours.group(1)), int(ours.group(2))) if ours else None,
        header_id=int(header_id.group(1)) if header_id else None,
    )


def _split_returned_copy(text: str) -> tuple[str, str, str]:
    """(the notice, the marker, the returned original) of a plain-text bounce."""
    match = _RETURNED_COPY.search(text)
    if match is None:
        return text, "", ""
    return text[:match.start()], match.group(0), text[match.end():]


def _find_report(msg: Message) -> Message | None:
    for part in msg.walk():
        if (part.get_content_type() == "multipart/report"
                and str(part.get_param("report-type") or "").lower() == "delivery-status"):
            return part
    return None


def _status_blocks(report: Message, raw: bytes) -> list[Message]:
    """Per-message fields first, then one block per recipient."""
    for part in report.get_payload():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        payload = part.get_payload()
        encoding = _clean(part.get("Content-Transfer-Encoding")).lower()
        if encoding in ("base64", "quoted-printable"):
            # Some MTAs (Exchange among them) encode the report. The parser has already split
            # the still-encoded text into bogus blocks, so decode the part's raw body instead.
            text = _decode_transfer(_raw_part_body(raw, report.get_boundary(), part), encoding)
        elif isinstance(payload, list):  # the parser splits message/delivery-status into blocks
            return payload
        else:
            text = payload if isinstance(payload, str) else ""
        parser = email.parser.HeaderParser(policy=email.policy.compat32)
        return [parser.parsestr(block) for block in re.split(r"\r?\n\s*\r?\n", text.strip())]
    raise BounceError("the report has no message/delivery-status part (RFC 3464 section 2.1)")


def _raw_part_body(raw: bytes, boundary: str | None, part: Message) -> str:
    """The undecoded body of ``part`` as it stands in ``raw``, found between the report's
    boundaries by its content type."""
    wanted = part.get_content_type().encode()
    if boundary:
        delimiter = re.compile(rb"\r?\n--" + re.escape(boundary.encode("ascii", "replace")))
        for section in delimiter.split(raw):
            headers, sep, body = section.lstrip(b"\r\n").replace(b"\r\n", b"\n").partition(b"\n\n")
            if sep and re.search(rb"(?im)^content-type:\s*" + re.escape(wanted) + rb"\b", headers):
                return body.decode("ascii", "replace")
    raise BounceError("the encoded delivery-status part could not be located in the message")


def _decode_transfer(encoded: str, encoding: str) -> str:
    data = encoded.encode("ascii", "replace")
    try:
        raw = base64.b64decode(data) if encoding == "base64" else quopri.decodestring(data)
    except binascii.Error as exc:
        raise BounceError(f"the delivery-status part is not valid {encoding}: {exc}") from exc
    # message/global-delivery-status is UTF-8 (RFC 6533); plain reports are ASCII.
    return raw.decode("utf-8", "replace")


def _clean(value: str | None) -> str:
    return " ".join(str(value or "").split())


def _address(value: str | None) -> str:
    """``rfc822; user@example.org`` -> ``user@example.org``."""
    text = _clean(value)
    _, sep, address = text.partition(";")
    return (address if sep else text).strip().strip("<>").lower()


def _recipient(block: Message) -> RecipientStatus | None:
    action = _clean(block.get("Action")).lower().split(" ")[0]
    status_field = _clean(block.get("Status"))
    diagnostic = _clean(block.get("Diagnostic-Code"))
    kind_prefix, sep, rest = diagnostic.partition(";")
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", kind_prefix.strip()):
        diagnostic = rest.strip()
    diagnostic = diagnostic[:_DIAGNOSTIC_LIMIT]
    if not action and not status_field:
        return None
    status = _status(status_field, diagnostic, action)
    if status is None:
        return None
    if action not in _ACTIONS:
        action = {"5": "failed", "4": "delayed"}.get(status[0], "delivered")
    return RecipientStatus(
        final_recipient=_address(block.get("Final-Recipient")),
        original_recipient=_address(block.get("Original-Recipient")),
        action=action,
        status=status,
        diagnostic=diagnostic,
        kind=classify(status, diagnostic, action),
    )


def _status(field: str, diagnostic: str, action: str) -> str | None:
    """The enhanced code; a generic x.0.0 gives way to a precise one of the same class in the
    diagnostic, and a missing one is read from the diagnostic's reply code."""
    own = _ENHANCED.search(field)
    said = _ENHANCED.search(diagnostic)
    if own:
        code = ".".join(str(int(g)) for g in own.groups())
        if said and said.group(1) == own.group(1) and code.endswith(".0.0"):
            return ".".join(str(int(g)) for g in said.groups())
        return code
    if said:
        return ".".join(str(int(g)) for g in said.groups())
    basic = _BASIC_REPLY.search(diagnostic)
    if basic:
        return f"{basic.group(1)}.0.0"
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action)


def _hash_blocks(blocks: list[Message]) -> str:
    """SHA-256 of the report's fields with whitespace normalised: the same report hashes the
    same whether it came from a Maildir, an mbox or a webhook."""
    text = "\n\n".join(
        "\n".join(f"{name.lower()}: {_clean(value)}" for name, value in block.items())
        for block in blocks
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _returned_headers(report: Message) -> Message | None:
    """Headers of the returned original message, if the report includes them."""
    for part in report.get_payload()[1:]:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                return inner[0]
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            data = part.get_payload(decode=True) or b""
            return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    return None


def _verp_ids(msg: Message, extra: list[str] | None = None) -> list[int]:
    values = [v for name in _VERP_HEADERS for v in msg.get_all(name, [])] + (extra or [])
    ids = []
    for _, address in getaddresses([str(v) for v in values]):
        match = _VERP.match(address.strip())
        if match and int(match.group(1)) not in ids:
            ids.append(int(match.group(1)))
    return ids


# --- acting on a report --------------------------------------------------------------------


def process_bounce_message(session: Session, raw: bytes, *, envelope_to: str | None = None,
                           settings: Settings | None = None) -> BounceOutcome:
    """Record one bounce message and act on it; the caller commits.

    ``envelope_to`` is the envelope recipient when the caller knows it (a webhook whose
    provider passes it apart from the message); it is tried as a VERP address first.
    Raises BounceError for input that is not a readable message (nothing is written).
    """
    settings = settings or get_settings()
    report = parse_report(raw)
    if report is None:
        return BounceOutcome(UNMATCHED, "not a delivery-status report (RFC 3464): nothing to do")
    if not report.failures:
        return BounceOutcome(UNMATCHED, "the report has no failed or delayed recipient")
    verp_ids = _verp_ids(Message(), [envelope_to]) if envelope_to else []
    delivery, matched_by = _find_delivery(session, report, verp_ids + report.verp_ids)
    if delivery is None:
        return BounceOutcome(UNMATCHED, "the report names no delivery of ours (no known VERP "
                             "address, Message-ID or X-Digest-Delivery)")
    failure = _pick(report.failures, delivery.email)
    outcome = BounceOutcome(RECORDED, "", kind=failure.kind, delivery_id=delivery.id,
                            email=delivery.email, status_code=failure.status,
                            diagnostic=failure.diagnostic, matched_by=matched_by)
    # Serialise bounces of one subscriber (PostgreSQL; SQLite writers are serial anyway).
    sub = session.scalars(select(Subscriber).where(Subscriber.id == delivery.subscriber_id)
                          .with_for_update()).one()
    diagnostic = failure.diagnostic
    if failure.final_recipient and failure.final_recipient != delivery.email:
        diagnostic = f"{diagnostic} (final recipient {failure.final_recipient})".strip()
    bounce_id = _insert_once(session, delivery_id=delivery.id, email=delivery.email,
                             status_code=failure.status, kind=failure.kind,
                             diagnostic=diagnostic[:_DIAGNOSTIC_LIMIT],
                             report_hash=report.report_hash, created_at=utcnow())
    if bounce_id is None:
        outcome.result = DUPLICATE
        outcome.reason = "this report was processed before: nothing changed"
        return outcome
    detail = f"{failure.status} {failure.diagnostic}".strip()
    if failure.kind == HARD:
        suppress(session, delivery.email, "hard_bounce", detail)
        _mark_failed(session, delivery, failure)
        outcome.suppressed = True
        outcome.reason = "the address does not exist: suppressed"
    elif failure.kind == SOFT:
        outcome.reason, outcome.suppressed = _count_soft(session, sub, delivery, bounce_id,
                                                         detail, settings)
    else:
        # Through a relay, this report is how a block list or reputation filter at the
        # receiving end reaches us: stop sending to that domain for a while, as a 5.7.x
        # reply at SMTP time does (digest.deliver).
        domain = recipient_domain(delivery.email)
        now = utcnow()
        until = pause_domain(session, domain,
                             now + timedelta(minutes=settings.policy_pause_minutes),
                             f"bounce report: {detail}", delivery_id=delivery.id, now=now)
        outcome.reason = (f"refused by the receiving server's policy: reported, the address is "
                          f"not suppressed, {domain} is paused until {until:%Y-%m-%dT%H:%M:%SZ}; "
                          "check authentication and reputation")
    session.flush()
    return outcome


def _find_delivery(session: Session, report: DeliveryStatusReport,
                   verp_ids: list[int]) -> tuple[Delivery | None, str | None]:
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
    return None, None


def _pick(failures: list[RecipientStatus], address: str) -> RecipientStatus:
    """The block about the address we sent to (any block if it was forwarded), worst first."""
    address = address.lower()
    own = [f for f in failures if address in (f.final_recipient, f.original_recipient)]
    order = {HARD: 0, POLICY: 1, SOFT: 2}
    return sorted(own or failures, key=lambda f: order[f.kind])[0]


def _insert_once(session: Session, **values) -> int | None:
    """Insert the bounce unless the same one exists; its id, or None for a duplicate."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Bounce).values(**values).on_conflict_do_nothing().returning(Bounce.id)
    return session.scalar(stmt)


def _mark_failed(session: Session, delivery: Delivery, failure: RecipientStatus) -> None:
    """A sent digest that bounced later is failed; when it was sent and what SMTP said stay."""
    note = f"bounced after it was accepted: {failure.status} {failure.diagnostic}".strip()
    reply = f"{delivery.smtp_reply} | {note}" if delivery.smtp_reply else note
    session.execute(update(Delivery).where(Delivery.id == delivery.id,
                                           Delivery.status == DeliveryStatus.sent.value)
                    .values(status=DeliveryStatus.failed.value, smtp_reply=reply,
                            updated_at=utcnow()))


def _count_soft(session: Session, sub: Subscriber, delivery: Delivery, bounce_id: int,
                detail: str, settings: Settings) -> tuple[str, bool]:
    """(what happened, whether the address was suppressed now)."""
    # One digest that is delayed, then given up on, is one soft bounce, not two.
    earlier = session.scalar(select(func.count()).where(
        Bounce.delivery_id == delivery.id, Bounce.kind == SOFT, Bounce.id != bounce_id))
    if earlier:
        return "a soft bounce of a digest already counted: not counted again", False
    # Counted afresh from the reports of the window, not incremented: a reader whose mailbox
    # was full last spring starts from zero, and a re-count can never drift.
    since = utcnow() - timedelta(days=settings.soft_bounce_window_days)
    recent = session.scalar(
        select(func.count(func.distinct(Bounce.delivery_id)))
        .join(Delivery, Delivery.id == Bounce.delivery_id)
        .where(Delivery.subscriber_id == sub.id, Bounce.kind == SOFT, Bounce.created_at >= since))
    session.execute(update(Subscriber).where(Subscriber.id == sub.id).values(soft_bounces=recent))
    session.refresh(sub, ["soft_bounces"])
    threshold = settings.soft_bounce_threshold
    if sub.soft_bounces >= threshold:
        suppress(session, delivery.email, "soft_bounces",
                  f"{sub.soft_bounces} soft bounces; last: {detail}")
        return f"soft bounce {sub.soft_bounces} of {threshold}: suppressed", True
    return f"soft bounce {sub.soft_bounces} of {threshold}: counted", False


# --- mailboxes -----------------------------------------------------------------------------


def open_mailbox(path: str | Path, fmt: str = "auto") -> mailbox.Mailbox:
    """A Maildir folder or an mbox file, read-only in spirit: nothing is moved or deleted."""
    if fmt not in FORMATS:
        raise ValidationError(f"bad format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise BounceError(f"cannot read {path}: no such file or folder; give a Maildir folder "
                          "or an mbox file")
    is_maildir = path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()
    if fmt == "auto":
        fmt = "maildir" if path.is_dir() else "mbox"
    if fmt == "maildir":
        if not is_maildir:
            raise BounceError(f"{path} is not a Maildir: it needs 'cur' and 'new' folders")
        return mailbox.Maildir(path, factory=None, create=False)
    if path.is_dir():
        raise BounceError(f"{path} is a folder, not an mbox file; use --format maildir for "
                          "a Maildir")
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
    except OSError as exc:
        raise BounceError(f"cannot read {path}: {exc.strerror}") from exc
    if head and head != b"From ":
        raise BounceError(f"{path} is not an mbox file: its first line does not start with "
                          "'From '")
    return mailbox.mbox(path, factory=None, create=False)


def _messages(box: mailbox.Mailbox) -> Iterator[tuple[str, bytes | None, str | None]]:
    try:
        keys = box.keys()  # an mbox's are in file order already
    except OSError as exc:
        raise BounceError(f"cannot read the mailbox: {exc.strerror or exc}") from exc
    if isinstance(box, mailbox.Maildir):
        keys.sort()  # names start with the delivery time
    for key in keys:
        try:
            yield str(key), box.get_bytes(key), None
        except (OSError, KeyError) as exc:  # removed or unreadable meanwhile
            yield str(key), None, f"cannot read the message: {exc}"


def process_mailbox(path: str | Path, fmt: str = "auto", *,
                    settings: Settings | None = None) -> BounceReport:
    """Process every message of a Maildir or mbox; each one in its own transaction.

    The mailbox is left as it is (processing it again changes nothing). A message that is
    not a bounce is counted as unmatched; one that cannot be read or parsed is listed in
    ``errors`` and nothing is written for it. A path that is no mailbox raises BounceError.
    """
    settings = settings or get_settings()
    box = open_mailbox(path, fmt)
    report = BounceReport()
    make_session = db._sessionmaker(settings.database_url)
    try:
        for key, raw, problem in _messages(box):
            report.processed += 1
            if problem is not None:
                report.errors.append((key, problem))
                continue
            session = make_session()
            try:
                outcome = process_bounce_message(session, raw, settings=settings)
                session.commit()
            except DigestError as exc:
                session.rollback()
                report.errors.append((key, str(exc)))
                continue
            except IntegrityError:  # another process suppressed the same address just now
                session.rollback()
                report.errors.append((key, "changed by another process at the same time; "
                                           "process the mailbox again"))
                continue
            finally:
                session.close()
            report.outcomes.append((key, outcome))
            if outcome.result == RECORDED:
                setattr(report, outcome.kind, getattr(report, outcome.kind) + 1)
            elif outcome.result == DUPLICATE:
                report.duplicates += 1
            else:
                report.unmatched += 1
    finally:
        box.close()
    return report
