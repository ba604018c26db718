"""Reading a bounce: RFC 3464 delivery-status reports, and (through digest.bounces.text)
the bounces written for people and the providers' notifications.

A report (``multipart/report; report-type=delivery-status``) names the delivery it is
about in one of three ways, tried in this order:

1. the VERP address it was sent to, ``bounces+<delivery id>@<domain>`` (our Return-Path),
   found in Delivered-To, X-Original-To, Envelope-To, X-Envelope-To or To;
2. the Message-ID of the returned original, ``<digest.<run>.<delivery>@<domain>>``, in its
   ``text/rfc822-headers`` or ``message/rfc822`` part (for servers that reply to the
   From address or lose the VERP on the way);
3. the returned original's ``X-Digest-Delivery`` header.

Each recipient block is judged by ``digest.delivery.classify_dsn`` (the one classifier the
sending side uses too): the reply quoted in Diagnostic-Code beats the ``Status:`` field.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.errors
import email.parser
import email.policy
import hashlib
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from typing import cast

from digest.delivery.classify import Fault, Verdict, classify_dsn, enhanced_status
from digest.errors import BounceError

# A report that returns the whole digest is ~100 KB; anything far larger is not a bounce.
MAX_BOUNCE_BYTES = 5 * 1024 * 1024

_VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_VERP = re.compile(r"^bounces\+(\d{1,18})@", re.I)
OUR_MESSAGE_ID = re.compile(r"<digest\.(\d{1,18})\.(\d{1,18})@[^<>\s]+>", re.I)
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
DIAGNOSTIC_LIMIT = 2000


@dataclass(frozen=True)
class RecipientStatus:
    """One failed, delayed or delivered recipient of a bounce."""

    final_recipient: str  # the address, lower-case ("" when the report leaves it out)
    original_recipient: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str | None  # enhanced status code, "5.1.1"; None when nothing gave one
    diagnostic: str  # Diagnostic-Code without its type ("smtp; ")
    verdict: Verdict

    @property
    def kind(self) -> Fault | None:
        """hard | soft | policy | sender; None: not a failure (delivered, a delay warning)."""
        return None if self.verdict.fault is Fault.none else self.verdict.fault


@dataclass(frozen=True)
class DeliveryStatusReport:
    """What a bounce says and which of our deliveries it may be about."""

    recipients: list[RecipientStatus]
    report_hash: str
    verp_ids: list[int]  # from the report's own headers, in header order
    message_id: str | None  # of the returned original, when it is one of ours
    message_id_ids: tuple[int, int] | None  # (run id, delivery id) from that Message-ID
    header_id: int | None  # X-Digest-Delivery of the returned original
    source: str = "rfc3464"  # rfc3464 | plain-text | flufl.bounce | amazon-ses

    @property
    def failures(self) -> list[RecipientStatus]:
        return [r for r in self.recipients if r.kind]


def recipient(addr: str, action: str, status: str | None, diagnostic: str,
              original: str = "") -> RecipientStatus:
    """A recipient judged by the one classifier."""
    verdict = classify_dsn(status, diagnostic, action)
    return RecipientStatus(final_recipient=addr.lower(), original_recipient=original,
                           action=action, status=verdict.status or status,
                           diagnostic=diagnostic[:DIAGNOSTIC_LIMIT], verdict=verdict)


def parse_report(raw: bytes) -> DeliveryStatusReport | None:
    """The bounce in ``raw``, or None when the message is not one (an autoreply, a person's
    mail).

    Raises BounceError, with a sentence saying what is wrong, for input that is not a
    readable email message (empty, oversized, binary, a MIME structure that does not match
    its body) and for a delivery-status report without any per-recipient status.
    """
    msg = read_message(raw)
    try:
        report = _find_report(msg)
        if report is None:
            from digest.bounces.text import text_bounce

            return text_bounce(msg, raw)
        blocks = _status_blocks(report, raw)
        # Per-message fields come first and never carry Action or Status.
        recipients = [r for r in (_recipient(b) for b in blocks) if r is not None]
        returned = _returned_headers(report)
    except (email.errors.MessageError, LookupError, TypeError, ValueError, AttributeError,
            UnicodeError) as exc:
        # The exception's own words mean nothing to an operator; say what we know.
        raise BounceError("the message's MIME structure is damaged (a part cannot be read); "
                          "it was not processed") from exc
    if not recipients and not any(b.get("Final-Recipient") or b.get("Original-Recipient")
                                  for b in blocks):
        # Only per-message fields (Netscape's, some gateways'): the notice names the
        # recipients in its text part, read as a bounce without a status part is.
        from digest.bounces.text import text_bounce

        found = text_bounce(msg, raw)
        if found is not None:
            return found
    if not recipients:
        raise BounceError(
            "the delivery-status report has no recipient block with an Action or Status; "
            "it is malformed (RFC 3464 section 2.3)"
        )
    # str(): a header with raw 8-bit bytes comes back as an email.header.Header.
    ours = OUR_MESSAGE_ID.search(str(returned.get("Message-ID", ""))) if returned else None
    header_id = str(returned.get("X-Digest-Delivery", "")).strip() if returned else ""
    return DeliveryStatusReport(
        recipients=recipients,
        report_hash=_hash_blocks(blocks),
        verp_ids=verp_ids(msg),
        message_id=ours.group(0) if ours else None,
        message_id_ids=(int(ours.group(1)), int(ours.group(2))) if ours else None,
        header_id=int(header_id) if header_id.isdigit() and len(header_id) <= 18 else None,
    )


def read_message(raw: bytes) -> Message:
    """``raw`` as an email message; BounceError, with a sentence saying what is wrong, for
    input that is not a readable one (empty, oversized, binary, a MIME structure that does
    not match its body)."""
    if not raw or not raw.strip():
        raise BounceError("the message is empty")
    if len(raw) > MAX_BOUNCE_BYTES:
        raise BounceError(f"the message is {len(raw)} bytes, more than the "
                          f"{MAX_BOUNCE_BYTES} a bounce can be; not read")
    if b"\0" in raw[:65536]:
        raise BounceError("the file holds binary data, not an email message")
    try:
        # compat32: raw strings and no header parsing that could trip over odd values.
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except (email.errors.MessageError, LookupError, TypeError, ValueError) as exc:
        raise BounceError("the message could not be read as an email message") from exc
    if not msg.keys():
        raise BounceError("the file is not an email message: it does not start with header "
                          "lines (From:, To:, Subject: ...)")
    problem = _mime_problem(msg)
    if problem:
        raise BounceError(problem)
    return msg


def _mime_problem(msg: Message) -> str | None:
    """What is wrong with the MIME structure, in words, or None."""
    for part in msg.walk():
        if part.get_content_maintype() != "multipart":
            continue
        if not part.get_boundary():
            return ("the message says it is multipart but names no MIME boundary, so its "
                    "parts cannot be told apart; it was not processed")
        if not isinstance(part.get_payload(), list) or any(
                isinstance(d, (email.errors.StartBoundaryNotFoundDefect,
                               email.errors.NoBoundaryInMultipartDefect))
                for d in part.defects):
            return ("the message's MIME boundary does not match its body (damaged or "
                    "truncated in transit), so its parts cannot be read; it was not processed")
    return None


def _subparts(part: Message) -> list[Message]:
    """A multipart part's payload: its parts. (Typed as any payload; a part that is not
    multipart after all fails further on with AttributeError, read as a damaged message.)"""
    return cast(list[Message], part.get_payload())


def _find_report(msg: Message) -> Message | None:
    # Only a report that carries its status part; any other is read as text (flufl.bounce).
    for part in msg.walk():
        if (part.get_content_type() == "multipart/report"
                and str(part.get_param("report-type") or "").lower() == "delivery-status"
                and any(p.get_content_type() in _STATUS_TYPES for p in _subparts(part))):
            return part
    return None


def _status_blocks(report: Message, raw: bytes) -> list[Message]:
    """Per-message fields first, then one block per recipient."""
    for part in _subparts(report):
        if part.get_content_type() not in _STATUS_TYPES:
            continue
        payload = part.get_payload()
        encoding = clean(part.get("Content-Transfer-Encoding")).lower()
        if encoding in ("base64", "quoted-printable"):
            # Some MTAs (Exchange among them) encode the report. The parser has already split
            # the still-encoded text into bogus blocks, so decode the part's raw body instead.
            text = _decode_transfer(_raw_part_body(raw, report.get_boundary(), part), encoding)
        elif isinstance(payload, list):  # the parser splits message/delivery-status into blocks
            return cast(list[Message], payload)
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
        raise BounceError(f"the delivery-status part is not valid {encoding} (damaged in "
                          "transit); it was not processed") from exc
    # message/global-delivery-status is UTF-8 (RFC 6533); plain reports are ASCII.
    return raw.decode("utf-8", "replace")


def clean(value: str | None) -> str:
    return " ".join(str(value or "").split())


def address(value: str | None) -> str:
    """``rfc822; user@example.org`` -> ``user@example.org``."""
    text = clean(value)
    _, sep, address = text.partition(";")
    return (address if sep else text).strip().strip("<>").lower()


def _recipient(block: Message) -> RecipientStatus | None:
    action = clean(block.get("Action")).lower().split(" ")[0]
    status_field = clean(block.get("Status"))
    diagnostic = clean(block.get("Diagnostic-Code"))
    kind_prefix, sep, rest = diagnostic.partition(";")
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", kind_prefix.strip()):
        diagnostic = rest.strip()
    if not action and not status_field:
        return None
    if action not in _ACTIONS:
        code = enhanced_status(status_field) or enhanced_status(diagnostic) or ""
        action = {"5": "failed", "4": "delayed", "2": "delivered"}.get(code[:1], "failed")
    return recipient(address(block.get("Final-Recipient")), action, status_field or None,
                     diagnostic, original=address(block.get("Original-Recipient")))


def _hash_blocks(blocks: list[Message]) -> str:
    """SHA-256 of the report's fields with whitespace normalised: the same report hashes the
    same whether it came from a Maildir, an mbox or a webhook."""
    text = "\n\n".join(
        "\n".join(f"{name.lower()}: {clean(value)}" for name, value in block.items())
        for block in blocks
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _returned_headers(report: Message) -> Message | None:
    """Headers of the returned original message, if the report includes them."""
    for part in _subparts(report)[1:]:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                return cast(Message, inner[0])
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            data = cast(bytes, part.get_payload(decode=True) or b"")
            return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    return None


def verp_ids(msg: Message, extra: list[str] | None = None) -> list[int]:
    values = [v for name in _VERP_HEADERS for v in msg.get_all(name, [])] + (extra or [])
    ids = []
    for _, address in getaddresses([str(v) for v in values]):
        match = _VERP.match(address.strip())
        if match and int(match.group(1)) not in ids:
            ids.append(int(match.group(1)))
    return ids


