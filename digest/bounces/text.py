"""Bounces without a delivery-status part: provider notifications, and notices written for
people (qmail, Exim's default, Yahoo, old gateways), read with flufl.bounce's detectors.

Tried in this order, the first that finds a recipient wins:

1. An Amazon SES notification (the JSON SES posts to SNS, delivered by email, bare or in
   SNS's envelope). Each bounced recipient's own ``status``/``diagnosticCode`` is judged by
   the one classifier when SES passes it on (SES's "Permanent/General" often wraps a 5.7.1
   block-list refusal); when it does not, the bounce type decides:

   - Permanent + General or NoEmail: hard (SES found the address does not exist);
   - Permanent + Suppressed / OnAccountSuppressionList / UnsubscribedRecipient: sender.
     SES refused to send because of its own list, not the receiver: nothing changes for
     the reader, the operator is told (pausing the reader's whole domain would be wrong);
   - Transient + MailboxFull: soft; Transient + ContentRejected: policy (the receiver's
     content filter); any other Transient (General, MessageTooLarge, AttachmentRejected)
     and Undetermined: soft. A Transient bounce is never hard, whatever its status says.

   Complaint and delivery notifications are not bounces and are left alone.
2. A notice from the mail system itself (MAILER-DAEMON or postmaster, or Exim's
   X-Failed-Recipients) that quotes an SMTP reply: the reply is judged by the classifier;
   "after MAIL FROM" in Exim's words makes it a refusal of our sender.
3. Any message in which flufl.bounce (GNU Mailman's detectors) finds a failed recipient.
   The reply quoted next to the address, if any, is judged by the classifier; without one
   it is soft (never hard from a guess). flufl.bounce's "temporary" failures are delay
   warnings: not failures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from email.message import Message
from email.utils import getaddresses
from typing import Any, cast

from digest.bounces.parse import (
    OUR_MESSAGE_ID,
    DeliveryStatusReport,
    RecipientStatus,
    address,
    clean,
    recipient,
    verp_ids,
)
from digest.delivery.classify import Fault, Verdict, classify_smtp

log = logging.getLogger(__name__)

_MAIL_SYSTEM_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
_PLAIN_REPLY = re.compile(
    r"(?<![\d.])(?P<basic>[45]\d\d)(?:[ -]#?(?P<enhanced>[45]\.\d{1,3}\.\d{1,3}))?"
    r"(?=[ \t:;,.-]|$)", re.M)
_QMAIL_RECIPIENT = re.compile(r"(?m)^<([^<>\s@]+@[^<>\s]+)>:\s*$")
_RETURNED_COPY = re.compile(
    r"(?im)^-{2,}\s*(?:below this line is a copy of the message|this is a copy of the message"
    r"|original message|returned message)[^\n]*$")
# qmail writes its reason under the address with the enhanced code last: "Sorry, no mailbox
# here by that name. (#5.1.1)"; the paragraph ends at a blank line.
_QMAIL_PARAGRAPH = re.compile(r"\A[^\n]*\n((?:[^\n]*\S[^\n]*\n?){1,8})")
_QMAIL_CODE = re.compile(r"\(#([245]\.\d{1,3}\.\d{1,3})\)")
_HEADER_ID = re.compile(r"(?im)^X-Digest-Delivery:\s*(\d{1,18})\s*$")
_AFTER_MAIL_FROM = re.compile(r"after MAIL FROM", re.I)
# How far after an address its reply may stand (a notice's paragraph about it).
_NEAR = 600
_TEXT_LIMIT = 200_000

_SES_SENDER_SUBTYPES = ("suppressed", "onaccountsuppressionlist", "unsubscribedrecipient")


def text_bounce(msg: Message, raw: bytes) -> DeliveryStatusReport | None:
    """The bounce a message without a delivery-status part carries, or None."""
    text = body_text(msg)
    found = _ses_notification(text, msg, raw)
    if found is None:
        found = _mail_system_notice(msg, text, raw)
    if found is None:
        found = _flufl(msg, text, raw)
    return found


# --- Amazon SES ------------------------------------------------------------------------------


def _ses_notification(text: str, msg: Message, raw: bytes) -> DeliveryStatusReport | None:
    start = text.find("{")
    if start < 0 or '"bounce' not in text:
        return None
    try:
        data = json.loads(text[start:text.rfind("}") + 1])
        if isinstance(data, dict) and isinstance(data.get("Message"), str):  # SNS envelope
            data = json.loads(data["Message"])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = str(data.get("notificationType") or data.get("eventType") or "").lower()
    bounce = data.get("bounce")
    if kind != "bounce" or not isinstance(bounce, dict):
        return None
    bounce_type = str(bounce.get("bounceType") or "Undetermined")
    subtype = str(bounce.get("bounceSubType") or "General")
    recipients = [ses_recipient(r, bounce_type, subtype)
                  for r in bounce.get("bouncedRecipients") or [] if isinstance(r, dict)]
    recipients = [r for r in recipients if r.final_recipient]
    if not recipients:
        return None
    mail = data.get("mail")
    if not isinstance(mail, dict):
        mail = {}
    headers = [f"{h.get('name')}: {h.get('value')}" for h in mail.get("headers") or []
               if isinstance(h, dict)]
    extra = [str(mail.get("source") or "")]
    return _report(recipients, "amazon-ses", msg, "\n".join(headers), extra=extra)


def ses_recipient(entry: dict[str, Any], bounce_type: str, subtype: str) -> RecipientStatus:
    addr = address(str(entry.get("emailAddress") or ""))
    status = clean(str(entry.get("status") or "")) or None
    diagnostic = clean(str(entry.get("diagnosticCode") or ""))
    prefix, sep, rest = diagnostic.partition(";")
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", prefix.strip()):
        diagnostic = rest.strip()
    transient = bounce_type.lower() != "permanent"
    action = "failed"
    said = f"SES {bounce_type}/{subtype}"
    if status or diagnostic:
        found = recipient(addr, action, status, diagnostic or said)
        if found.verdict.fault is not Fault.hard or not transient:
            return found
        return _judged(addr, found.status, f"{diagnostic or said}",
                       Fault.soft, f"a transient SES bounce is never hard: {said}")
    sub = subtype.lower()
    if not transient and sub in ("general", "noemail"):
        return _judged(addr, "5.1.1" if sub == "noemail" else None, said, Fault.hard,
                       f"SES reports a permanent bounce of the address ({said})")
    if sub in _SES_SENDER_SUBTYPES:
        return _judged(addr, None, said, Fault.sender,
                       f"SES refused to send to the address because of its own list ({said}): "
                       "check the SES account's suppression list")
    if sub == "contentrejected":
        return _judged(addr, None, said, Fault.policy,
                       f"the receiver's content filter refused the digest ({said})")
    return _judged(addr, None, said, Fault.soft, f"SES reports a soft bounce ({said})")


def _judged(addr: str, status: str | None, diagnostic: str, fault: Fault,
            why: str) -> RecipientStatus:
    return RecipientStatus(final_recipient=addr, original_recipient="", action="failed",
                           status=status, diagnostic=diagnostic,
                           verdict=Verdict(fault, status, True, why))


# --- notices from the mail system ------------------------------------------------------------


def _mail_system_notice(msg: Message, text: str, raw: bytes) -> DeliveryStatusReport | None:
    """A notice from the mail system (MAILER-DAEMON/postmaster, or Exim's X-Failed-Recipients)
    that quotes an SMTP reply code; an autoreply or a person's mail never counts."""
    sender = address(str(msg.get("From", ""))).partition("@")[0]
    failed_header = clean(str(msg.get("X-Failed-Recipients", "")))
    if sender not in _MAIL_SYSTEM_SENDERS and not failed_header:
        return None
    notice, original = _split_returned_copy(text)
    reply = _PLAIN_REPLY.search(notice)
    if reply is None:
        return None
    addresses = [a for _, a in getaddresses([failed_header])] if failed_header else \
        _QMAIL_RECIPIENT.findall(notice)
    if not addresses:
        addresses = sorted(_flufl_addresses(msg)[1]) or [""]
    recipients = [_near_reply(a, notice) or _reply_recipient(a, notice, reply)
                  for a in addresses]
    return _report(recipients, "plain-text", msg, original or text)


def _reply_recipient(addr: str, notice: str, reply: re.Match[str]) -> RecipientStatus:
    """The recipient judged by ``reply`` and the indented lines that continue it."""
    first, *rest = notice[reply.start():].splitlines()
    lines = [first]
    for line in rest:
        if not line[:1].isspace() or not line.strip():
            break
        lines.append(line)
    diagnostic = clean(" ".join(lines))
    if _AFTER_MAIL_FROM.search(notice[max(0, reply.start() - 200):reply.start()]):
        verdict = classify_smtp(int(reply.group("basic")), diagnostic, "MAIL FROM")
        return RecipientStatus(addr.lower(), "", "failed", verdict.status, diagnostic, verdict)
    return recipient(addr, "failed", reply.group("enhanced") or None, diagnostic)


def _near_reply(addr: str, notice: str) -> RecipientStatus | None:
    """The recipient judged by the first reply quoted after its address, if one is near."""
    if not addr:
        return None
    at = notice.lower().find(addr.lower())
    if at < 0:
        return None
    window = notice[at:at + _NEAR]
    reply = _PLAIN_REPLY.search(window, len(addr))
    if reply:
        return _reply_recipient(addr, window, reply)
    return _qmail_reason(addr, window)


def _qmail_reason(addr: str, window: str) -> RecipientStatus | None:
    """The recipient judged by a qmail paragraph under its address that ends in "(#5.1.1)"."""
    paragraph = _QMAIL_PARAGRAPH.match(window)
    code = _QMAIL_CODE.search(paragraph.group(1)) if paragraph else None
    if paragraph is None or code is None:
        return None
    return recipient(addr, "failed", code.group(1), clean(paragraph.group(1)))


# --- flufl.bounce ----------------------------------------------------------------------------


def _flufl_addresses(msg: Message) -> tuple[set[str], set[str]]:
    """(temporary, permanent) failed addresses flufl.bounce's detectors find."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a heuristic detector tripping over odd input finds nothing
        log.debug("flufl.bounce could not read the message", exc_info=True)
        return set(), set()

    def decode(found: Iterable[object]) -> set[str]:
        values = (a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in found)
        return {address(v) for v in values if "@" in v}

    return decode(temporary), decode(permanent)


def _flufl(msg: Message, text: str, raw: bytes) -> DeliveryStatusReport | None:
    temporary, permanent = _flufl_addresses(msg)
    if not temporary and not permanent:
        return None
    notice, original = _split_returned_copy(text)
    recipients = []
    for addr in sorted(permanent):
        recipients.append(_near_reply(addr, notice) or _judged(
            addr, None, "", Fault.soft,
            "a bounce that quotes no reply for the address: counted as soft, not suppressed"))
    for addr in sorted(temporary - permanent):
        recipients.append(RecipientStatus(addr, "", "delayed", None, "", Verdict(
            Fault.none, None, False, "a delay warning: the receiving side is still trying")))
    return _report(recipients, "flufl.bounce", msg, original or text)


# --- shared ----------------------------------------------------------------------------------


def _report(recipients: list[RecipientStatus], source: str, msg: Message, original: str,
            extra: list[str] | None = None) -> DeliveryStatusReport:
    ours = OUR_MESSAGE_ID.search(original)
    header_id = _HEADER_ID.search(original)
    digest_text = "\n".join(f"{source} {r.final_recipient} {r.status} {r.diagnostic}"
                            for r in recipients)
    return DeliveryStatusReport(
        recipients=recipients,
        report_hash=hashlib.sha256(digest_text.encode("utf-8", "surrogateescape")).hexdigest(),
        verp_ids=verp_ids(msg, extra),
        message_id=ours.group(0) if ours else None,
        message_id_ids=(int(ours.group(1)), int(ours.group(2))) if ours else None,
        header_id=int(header_id.group(1)) if header_id else None,
        source=source,
    )


def body_text(msg: Message) -> str:
    """Every text part (and the headers of returned messages), decoded, as one text."""
    chunks = []
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                headers = cast(Message, inner[0])  # a message/rfc822 part holds one message
                chunks.append("\n".join(f"{k}: {v}" for k, v in headers.items()))
                continue
        if part.get_content_maintype() not in ("text", "message") and part is not msg:
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            chunks.append(data.decode(charset, "replace"))
        except LookupError:  # a charset Python does not know
            chunks.append(data.decode("utf-8", "replace"))
    return "\n".join(chunks)[:_TEXT_LIMIT]


def _split_returned_copy(text: str) -> tuple[str, str]:
    """(the notice, the returned original) of a plain-text bounce."""
    match = _RETURNED_COPY.search(text)
    if match is None:
        return text, ""
    return text[:match.start()], text[match.end():]
