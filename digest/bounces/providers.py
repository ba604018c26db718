"""Provider events: what Amazon SES (through SNS), Mailgun, SendGrid and Postmark post about
a message, read onto the same classifier and the same delivery record as a bounce by mail.

The web edge (``digest.web.providers``) checks each request's signature and hands the
decoded payload here; ``*_events`` turn it into ``ProviderEvent``\\ s and ``process_event``
acts on one:

- a bounce: each recipient judged by ``digest.delivery.classify_dsn`` on the receiver's own
  reply when the provider passes it on, else by the provider's own type (a provider's
  "temporary" or "transient" bounce is never hard; a refusal because of the provider's own
  suppression list is ``sender``: nothing changes for the reader); then
  ``process.act_on_report``, exactly as for a bounce by mail;
- a complaint: ``complaints.process_complaint``, the reader suppressed at once;
- a delivery: the receiving server took the digest; the row is already ``sent``: nothing
  is written;
- anything else (opens, clicks, a delay): nothing.

Which delivery an event is about: the VERP envelope sender when the provider passes it
(SES ``mail.source``, Mailgun ``envelope.sender``), our Message-ID (SES ``commonHeaders``,
Mailgun ``message.headers``, SendGrid ``smtp-id``), our X-Digest-Delivery header (SES with
headers in notifications) or a ``digest-delivery`` variable (Mailgun user-variables,
SendGrid custom args, Postmark Metadata); since the provider's signature vouches for the
event, last the latest delivery sent to the recipient it names (docs/providers.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from email.message import Message
from typing import Any

from sqlalchemy.orm import Session

from digest.bounces.arf import FeedbackReport
from digest.bounces.complaints import process_complaint
from digest.bounces.parse import (
    OUR_MESSAGE_ID,
    DeliveryStatusReport,
    RecipientStatus,
    address,
    clean,
    recipient,
    verp_ids,
)
from digest.bounces.process import UNMATCHED, BounceOutcome, act_on_report, find_delivery
from digest.delivery.classify import Fault, Verdict
from digest.errors import BounceError
from digest.settings import Settings

PROVIDERS = ("ses", "mailgun", "sendgrid", "postmark")
BOUNCE, COMPLAINT, DELIVERY, OTHER = "bounce", "complaint", "delivery", "other"
DELIVERED = "delivered"  # an outcome's result: the provider says the receiver took it
_HEADER_ID = re.compile(r"^\d{1,18}$")
_VARIABLE_NAMES = ("digest-delivery", "digest_delivery", "X-Digest-Delivery")


@dataclass(frozen=True)
class ProviderEvent:
    """One event about one recipient, as the provider reported it."""

    provider: str  # ses | mailgun | sendgrid | postmark
    kind: str  # bounce | complaint | delivery | other
    name: str  # the provider's own name for it ("Bounce/Permanent/General", "failed" ...)
    recipient: str  # lower-case; "" when the event names none
    event_id: str = ""  # the provider's id of the event, when it has one
    status: RecipientStatus | None = None  # a bounce's verdict
    feedback_type: str = "abuse"  # a complaint's
    message_id: str | None = None  # our Message-ID, when the provider passes it on
    header_id: int | None = None  # our X-Digest-Delivery / digest-delivery variable
    envelope: tuple[str, ...] = ()  # envelope senders that may be our VERP address

    def _ids(self) -> dict[str, Any]:
        ours = OUR_MESSAGE_ID.search(self.message_id or "")
        return {"verp_ids": verp_ids(Message(), [e for e in self.envelope if e]),
                "message_id": ours.group(0) if ours else None,
                "message_id_ids": (int(ours.group(1)), int(ours.group(2))) if ours else None,
                "header_id": self.header_id}

    @property
    def report_hash(self) -> str:
        text = f"{self.provider}\n{self.event_id}\n{self.kind}\n{self.recipient}\n{self.name}"
        if self.status is not None:
            text += f"\n{self.status.status}\n{self.status.diagnostic}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def process_event(session: Session, event: ProviderEvent, *, settings: Settings,
                  dry_run: bool = False, authenticated: bool = True) -> BounceOutcome:
    """Act on one provider event; the caller commits. ``authenticated``: the provider's
    signature vouches for it, so the recipient it names may tie it to a delivery (an event
    that came by mail names its delivery as a bounce does, or none)."""
    ids = event._ids()
    by_address = (event.recipient or None) if authenticated else None
    if event.kind == BOUNCE and event.status is not None:
        report = DeliveryStatusReport(recipients=[event.status], report_hash=event.report_hash,
                                      source=event.provider, **ids)
        return act_on_report(session, report, extra_verp=[], settings=settings,
                             dry_run=dry_run, by_address=by_address)
    if event.kind == COMPLAINT:
        feedback = FeedbackReport(feedback_type=event.feedback_type, recipient=event.recipient,
                                  detail=f"{event.provider} {event.name}"[:500],
                                  report_hash=event.report_hash, source=event.provider, **ids)
        return process_complaint(session, feedback, extra_verp=[], by_address=by_address,
                                 dry_run=dry_run)
    listed = [{"address": event.recipient or None, "status": None, "class": event.kind}]
    if event.kind == DELIVERY:
        probe = DeliveryStatusReport(recipients=[], report_hash="", source=event.provider, **ids)
        delivery, _ = find_delivery(session, probe, probe.verp_ids, by_address=by_address)
        which = f"delivery #{delivery.id}" if delivery is not None else "a message"
        return BounceOutcome(DELIVERED, f"the receiving server took {which}: nothing to change",
                             delivery_id=delivery.id if delivery else None,
                             email=delivery.email if delivery else None, recipients=listed,
                             dry_run=dry_run)
    return BounceOutcome(UNMATCHED, f"{event.provider} {event.name}: not a bounce, complaint or "
                         "delivery: nothing to do", recipients=listed, dry_run=dry_run)


# --- Amazon SES (the notification an SNS message carries) -------------------------------------


def ses_events(message: str) -> list[ProviderEvent]:
    """The events of an SES notification (the ``Message`` of an SNS Notification)."""
    from digest.bounces.text import ses_recipient

    data = _json_object(message, "the SNS message's Message is not an SES notification (JSON)")
    kind = str(data.get("notificationType") or data.get("eventType") or "")
    mail = _dict(data.get("mail"))
    headers = {str(h.get("name", "")).lower(): str(h.get("value", ""))
               for h in mail.get("headers") or [] if isinstance(h, dict)}
    common = _dict(mail.get("commonHeaders"))
    ids: dict[str, Any] = {
        "message_id": str(common.get("messageId") or headers.get("message-id") or ""),
        "header_id": _header_id(headers.get("x-digest-delivery")),
        "envelope": (str(mail.get("source") or ""),)}
    if kind.lower() == "bounce":
        bounce = _dict(data.get("bounce"))
        btype = str(bounce.get("bounceType") or "Undetermined")
        subtype = str(bounce.get("bounceSubType") or "General")
        found = []
        for entry in bounce.get("bouncedRecipients") or []:
            if isinstance(entry, dict):
                status = ses_recipient(entry, btype, subtype)
                found.append(ProviderEvent(
                    "ses", BOUNCE, f"Bounce/{btype}/{subtype}", status.final_recipient,
                    str(bounce.get("feedbackId") or ""), status=status, **ids))
        return found
    if kind.lower() == "complaint":
        complaint = _dict(data.get("complaint"))
        subtype = str(complaint.get("complaintSubType") or "")
        feedback = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        event_kind = COMPLAINT
        if subtype:  # "OnAccountSuppressionList": SES's own list refused it, no reader's act
            event_kind, feedback = OTHER, subtype
        return [ProviderEvent("ses", event_kind, f"Complaint/{feedback}",
                              address(str(r.get("emailAddress") or "")),
                              str(complaint.get("feedbackId") or ""), feedback_type=feedback,
                              **ids)
                for r in complaint.get("complainedRecipients") or [] if isinstance(r, dict)]
    if kind.lower() == "delivery":
        delivery = _dict(data.get("delivery"))
        return [ProviderEvent("ses", DELIVERY, "Delivery", address(str(r)), **ids)
                for r in delivery.get("recipients") or []]
    return [ProviderEvent("ses", OTHER, kind or "unknown", "", **ids)]


def ses_complaint_in_mail(text: str) -> list[ProviderEvent]:
    """The complaint events of an SES notification delivered by email (bare, or in SNS's
    envelope), or [] when the text carries none."""
    start = text.find("{")
    if start < 0 or '"complaint' not in text.lower():
        return []
    try:
        data = json.loads(text[start:text.rfind("}") + 1])
    except ValueError:
        return []
    if isinstance(data, dict) and isinstance(data.get("Message"), str):  # SNS envelope
        data = _json_object(data["Message"], "not an SES notification") if data[
            "Message"].lstrip().startswith("{") else {}
    if not isinstance(data, dict) or str(data.get("notificationType") or data.get(
            "eventType") or "").lower() != "complaint":
        return []
    return ses_events(json.dumps(data))


# --- Mailgun ----------------------------------------------------------------------------------


def mailgun_events(payload: dict[str, Any]) -> list[ProviderEvent]:
    """The event of a Mailgun webhook (``event-data``)."""
    data = _dict(payload.get("event-data"))
    name = str(data.get("event") or "")
    rcpt = address(str(data.get("recipient") or ""))
    headers = _dict(_dict(data.get("message")).get("headers"))
    ids: dict[str, Any] = {"message_id": _bracketed(str(headers.get("message-id") or "")),
           "header_id": _variable(_dict(data.get("user-variables"))),
           "envelope": (str(_dict(data.get("envelope")).get("sender") or ""),),
           "event_id": str(data.get("id") or "")}
    if name == "failed":
        severity = str(data.get("severity") or "permanent").lower()
        reason = str(data.get("reason") or "").lower()
        status = _dict(data.get("delivery-status"))
        said = clean(f"{status.get('code') or ''} {status.get('message') or ''} "
                     f"{status.get('description') or ''}")
        what = f"failed/{severity}/{reason or 'generic'}"
        if reason.startswith("suppress-"):
            verdict = _judged(rcpt, None, said or what, Fault.sender,
                              f"Mailgun refused to send because of its own list ({what}): "
                              "check the Mailgun domain's suppressions")
        elif severity != "permanent":
            # Mailgun still retries: a delay, not a bounce.
            verdict = recipient(rcpt, "delayed", None, said or what)
        else:
            verdict = _provider_verdict(rcpt, str(status.get("enhanced-code") or "") or None,
                                        said, what, hard_without_code=reason == "bounce")
        return [ProviderEvent("mailgun", BOUNCE, what, rcpt, status=verdict, **ids)]
    if name == "complained":
        return [ProviderEvent("mailgun", COMPLAINT, name, rcpt, **ids)]
    if name == "delivered":
        return [ProviderEvent("mailgun", DELIVERY, name, rcpt, **ids)]
    return [ProviderEvent("mailgun", OTHER, name or "unknown", rcpt, **ids)]


# --- SendGrid ---------------------------------------------------------------------------------

_SENDGRID_DROPPED = "dropped"


def sendgrid_events(payload: list[Any]) -> list[ProviderEvent]:
    """The events of a SendGrid event webhook post (a JSON array)."""
    found = []
    for data in payload:
        if not isinstance(data, dict):
            continue
        name = str(data.get("event") or "")
        rcpt = address(str(data.get("email") or ""))
        ids: dict[str, Any] = {"message_id": _bracketed(str(data.get("smtp-id") or "")),
               "header_id": _variable(data),
               "event_id": str(data.get("sg_event_id") or "")}
        if name == "bounce":
            btype = str(data.get("type") or "bounce")
            reason = clean(str(data.get("reason") or ""))
            status = clean(str(data.get("status") or "")) or None
            verdict = _provider_verdict(rcpt, status, reason, f"bounce/{btype}",
                                        hard_without_code=btype == "bounce")
            found.append(ProviderEvent("sendgrid", BOUNCE, f"bounce/{btype}", rcpt,
                                       status=verdict, **ids))
        elif name == _SENDGRID_DROPPED:
            reason = clean(str(data.get("reason") or "dropped"))
            verdict = _judged(rcpt, None, reason, Fault.sender,
                              f"SendGrid dropped the message ({reason}): its own suppression "
                              "list or our request, not the receiver; check the SendGrid account")
            found.append(ProviderEvent("sendgrid", BOUNCE, f"dropped/{reason}", rcpt,
                                       status=verdict, **ids))
        elif name == "spamreport":
            found.append(ProviderEvent("sendgrid", COMPLAINT, name, rcpt, **ids))
        elif name == "delivered":
            found.append(ProviderEvent("sendgrid", DELIVERY, name, rcpt, **ids))
        else:  # processed, deferred (SendGrid still retries), open, click ...
            found.append(ProviderEvent("sendgrid", OTHER, name or "unknown", rcpt, **ids))
    return found


# --- Postmark ---------------------------------------------------------------------------------

_POSTMARK_HARD = ("hardbounce", "bademailaddress")
_POSTMARK_SOFT = ("softbounce", "transient", "dnserror", "unknown")
_POSTMARK_POLICY = ("blocked", "dmarcpolicy", "spamnotification", "virusnotification")
_POSTMARK_SENDER = ("manuallydeactivated", "unsubscribe", "smtpapierror", "inbounderror",
                    "templaterenderingfailed", "unconfirmed")


def postmark_events(payload: dict[str, Any]) -> list[ProviderEvent]:
    """The event of a Postmark webhook (one record)."""
    record = str(payload.get("RecordType") or "")
    rcpt = address(str(payload.get("Email") or payload.get("Recipient") or ""))
    ids: dict[str, Any] = {"header_id": _variable(_dict(payload.get("Metadata"))),
           "event_id": str(payload.get("ID") or payload.get("MessageID") or "")}
    if record == "SpamComplaint":
        return [ProviderEvent("postmark", COMPLAINT, record, rcpt, **ids)]
    if record == "Delivery":
        return [ProviderEvent("postmark", DELIVERY, record, rcpt, **ids)]
    if record != "Bounce":
        return [ProviderEvent("postmark", OTHER, record or "unknown", rcpt, **ids)]
    btype = str(payload.get("Type") or "Unknown")
    said = clean(str(payload.get("Details") or payload.get("Description") or ""))
    what = f"Bounce/{btype}"
    key = btype.lower()
    if key == "spamcomplaint":
        return [ProviderEvent("postmark", COMPLAINT, what, rcpt, **ids)]
    if key in _POSTMARK_HARD:
        verdict = _provider_verdict(rcpt, None, said, what, hard_without_code=True)
    elif key in _POSTMARK_SOFT:
        verdict = _provider_verdict(rcpt, None, said, what, hard_without_code=False,
                                    never_hard=True)
    elif key in _POSTMARK_POLICY:
        verdict = _judged(rcpt, None, said or what, Fault.policy,
                          f"Postmark reports a policy refusal ({what})")
    elif key in _POSTMARK_SENDER:
        verdict = _judged(rcpt, None, said or what, Fault.sender,
                          f"Postmark did not send it because of its own list or our request "
                          f"({what}): check the Postmark server")
    else:  # AutoResponder, AddressChange, Subscribe, ChallengeVerification, OpenRelayTest
        return [ProviderEvent("postmark", OTHER, what, rcpt, **ids)]
    return [ProviderEvent("postmark", BOUNCE, what, rcpt, status=verdict, **ids)]


# --- shared -----------------------------------------------------------------------------------


def _provider_verdict(rcpt: str, status: str | None, said: str, what: str, *,
                      hard_without_code: bool, never_hard: bool = False) -> RecipientStatus:
    """The receiver's reply judged by the classifier; a provider's "hard" bounce that quotes
    no code is hard, a transient one never."""
    found = recipient(rcpt, "failed", status, said or what)
    if found.verdict.fault is Fault.hard and never_hard:
        return _judged(rcpt, found.status, said or what, Fault.soft,
                       f"a transient bounce is never hard: {what}")
    if found.verdict.status is None and hard_without_code:
        return _judged(rcpt, None, said or what, Fault.hard,
                       f"the provider reports a permanent bounce of the address ({what})")
    return found


def _judged(rcpt: str, status: str | None, diagnostic: str, fault: Fault,
            why: str) -> RecipientStatus:
    return RecipientStatus(final_recipient=rcpt, original_recipient="", action="failed",
                           status=status, diagnostic=diagnostic[:2000],
                           verdict=Verdict(fault, status, fault is not Fault.soft, why))


def _json_object(text: str, problem: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BounceError(problem) from exc
    if not isinstance(data, dict):
        raise BounceError(problem)
    return data


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bracketed(message_id: str) -> str:
    message_id = message_id.strip()
    return message_id if not message_id or message_id.startswith("<") else f"<{message_id}>"


def _header_id(value: object) -> int | None:
    text = str(value or "").strip()
    return int(text) if _HEADER_ID.match(text) else None


def _variable(values: dict[str, Any]) -> int | None:
    for name in _VARIABLE_NAMES:
        found = _header_id(values.get(name))
        if found is not None:
            return found
    return None
