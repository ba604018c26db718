"""Reading a complaint: ARF feedback reports (RFC 5965), what Yahoo, Outlook/Hotmail (JMRP),
AOL and others send when a reader presses "this is spam".

A report is ``multipart/report; report-type=feedback-report`` with a
``message/feedback-report`` part (``Feedback-Type``, ``User-Agent``, ``Original-Mail-From``,
``Original-Rcpt-To`` ...) and the reported message, whole (``message/rfc822``) or its
headers (``text/rfc822-headers``). It names the delivery it is about as a bounce does
(``digest.bounces.parse``), tried in this order:

1. a VERP address, ``bounces+<delivery id>@<domain>``: the report's own Delivered-To/To
   headers, ``Original-Mail-From`` (our envelope sender), the returned Return-Path;
2. the returned message's Message-ID, ``<digest.<run>.<delivery>@<domain>>``;
3. the returned message's ``X-Digest-Delivery``.

The complainer's address (``Original-Rcpt-To``, else the returned To) is kept for the record;
most feedback loops redact it, which is why the delivery, not the address, decides who is
suppressed.

No maintained Python library parses ARF (ADR 0025): the stdlib email package reads the MIME,
and the report's fields are header lines.
"""

from __future__ import annotations

import email.errors
import email.parser
import email.policy
import hashlib
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses
from typing import cast

from digest.bounces.parse import OUR_MESSAGE_ID, clean, read_message, verp_ids
from digest.errors import BounceError

# A reader's complaint: "abuse" (spam), "fraud" (phishing), "other". "not-spam" takes one
# back (nothing to do); "virus" and "auth-failure" (RFC 6591) are about the message or our
# authentication, not the reader's wish: told to the operator, nobody suppressed.
COMPLAINT_TYPES = ("abuse", "fraud", "other")
NOT_SPAM = "not-spam"
_RETURNED = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")


@dataclass(frozen=True)
class FeedbackReport:
    """A complaint (or other feedback) and which of our deliveries it may be about."""

    feedback_type: str  # lower-case: abuse | fraud | other | not-spam | virus | auth-failure
    recipient: str  # the complainer's address as reported, lower-case; "" when redacted
    detail: str  # who reported it, in their words (User-Agent, Reported-Domain ...)
    report_hash: str  # SHA-256 of the report's fields: the same report hashes the same
    verp_ids: list[int] = field(default_factory=list)
    message_id: str | None = None
    message_id_ids: tuple[int, int] | None = None
    header_id: int | None = None
    source: str = "arf"  # arf | ses | mailgun | sendgrid | postmark

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type in COMPLAINT_TYPES


def parse_feedback(raw: bytes) -> FeedbackReport | None:
    """The feedback report in ``raw``, or None when the message is not one.

    Raises BounceError for input that is not a readable message, and for a feedback report
    whose ``message/feedback-report`` part is missing (a damaged or hand-made report).
    """
    msg = read_message(raw)
    report = _find_feedback(msg)
    if report is None:
        return None
    try:
        parts = cast(list[Message], report.get_payload())
        fields = _fields(parts)
        returned = _returned_headers(parts)
    except (email.errors.MessageError, LookupError, TypeError, ValueError, AttributeError,
            UnicodeError) as exc:
        raise BounceError("the feedback report's MIME structure is damaged (a part cannot be "
                          "read); it was not processed") from exc
    if fields is None:
        raise BounceError("the feedback report has no message/feedback-report part; it is "
                          "malformed (RFC 5965 section 2)")
    feedback_type = clean(fields.get("Feedback-Type")).lower() or "abuse"
    rcpt = _first_address(fields.get_all("Original-Rcpt-To", []) or fields.get_all(
        "Removal-Recipient", []))
    if not rcpt and returned is not None:
        rcpt = _first_address(returned.get_all("To", []))
    # str(): a header with raw 8-bit bytes comes back as an email.header.Header.
    ours = OUR_MESSAGE_ID.search(str(returned.get("Message-ID", ""))) if returned else None
    header_id = clean(str(returned.get("X-Digest-Delivery", ""))) if returned else ""
    extra = [str(v) for v in fields.get_all("Original-Mail-From", [])]
    if returned is not None:
        extra += [str(v) for v in returned.get_all("Return-Path", [])]
    said = [f"{name}: {clean(fields.get(name))}" for name in
            ("User-Agent", "Reported-Domain", "Source-IP", "Arrival-Date", "Received-Date")
            if fields.get(name)]
    text = "\n".join(f"{k.lower()}: {clean(str(v))}" for k, v in fields.items())
    if ours:
        text += f"\nmessage-id: {ours.group(0).lower()}"
    return FeedbackReport(
        feedback_type=feedback_type,
        recipient=rcpt,
        detail="; ".join(said)[:500],
        report_hash=hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(),
        verp_ids=verp_ids(msg, extra),
        message_id=ours.group(0) if ours else None,
        message_id_ids=(int(ours.group(1)), int(ours.group(2))) if ours else None,
        header_id=int(header_id) if header_id.isdigit() and len(header_id) <= 18 else None,
    )


def _find_feedback(msg: Message) -> Message | None:
    for part in msg.walk():
        if (part.get_content_type() == "multipart/report"
                and str(part.get_param("report-type") or "").lower() == "feedback-report"):
            return part
    return None


def _fields(parts: list[Message]) -> Message | None:
    """The ``message/feedback-report`` fields as one header block."""
    for part in parts:
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):  # the parser may read the part as a message
            blocks = cast(list[Message], payload)
            merged = Message()
            for block in blocks:
                for name, value in block.items():
                    merged[name] = value
            return merged
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
        return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text.strip())
    return None


def _returned_headers(parts: list[Message]) -> Message | None:
    """Headers of the reported message, if the report includes them."""
    for part in parts[1:]:
        ctype = part.get_content_type()
        if ctype not in _RETURNED:
            continue
        inner = part.get_payload()
        if isinstance(inner, list) and inner:
            return cast(Message, inner[0])
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    return None


def _first_address(values: list[str]) -> str:
    for _, addr in getaddresses([str(v) for v in values]):
        addr = addr.strip().lower()
        if "@" in addr and "redacted" not in addr:
            return addr
    return ""
