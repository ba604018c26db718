"""The one classifier of delivery failures: SMTP replies at sending time and the
delivery-status codes of bounce reports alike say whose fault a failure is.

- ``hard``: the recipient's mailbox does not exist (5.1.x, a 5xx whose words say "user
  unknown", "no such user", "does not exist"). The only class that suppresses an address at
  once.
- ``soft``: the recipient's side, for now: 4xx, a dropped connection, a full mailbox (x.2.2),
  a suspended, disabled or inactive mailbox (5.2.1), rate limits, a message too large, and
  every permanent refusal we cannot read as one of the others (when in doubt, never
  suppress: the row fails, the address stays).
- ``policy``: the receiver refuses us on policy or reputation grounds (5.7.x, block lists,
  spam filters, DMARC/SPF/DKIM): pause the recipient domain, never suppress.
- ``sender``: our sender or set-up: any refusal of the session (greeting, EHLO, TLS, AUTH) or
  of MAIL FROM, codes about the sender (x.1.7, x.1.8), text saying the *sender* is rejected,
  and 5.5.x protocol errors. Put the batch back and tell the operator, never suppress.
- ``message``: the message itself, not the reader nor us: a size refusal (5.3.4, 5.2.3, or a
  552 at MAIL FROM or saying the message is too big, RFC 1870) at any step, MAIL FROM
  included. That one message fails with the reason; the batch goes on, nobody is suppressed.
- ``none``: not a failure (2xx/3xx; a report's delivered/relayed/expanded, a delay warning).

Where a report's ``Status:`` field and the server's reply quoted in its Diagnostic-Code
disagree, the reply wins: a "Status: 5.1.1" over "550 5.7.1 ... blacklisted" is policy.
Words beat the code the same way, in both directions, read as the reference classifiers
read them (``replywords``, ADR 0024), in this order: sender; a suspended, full or
size-limited mailbox (soft under any code, "5.1.1 mailbox full" too); policy words; rate
limits (soft); words saying the address does not exist (hard, also under a 5.7.x code
without policy words, and in a bounce report under a 4.x.x Status).

Two deliberate departures from "5.1.x is hard, 5.5.x is sender": 5.1.0 ("other address
status") is hard only with words saying the mailbox does not exist, and a 5.5.x reply that
says so ("550 5.5.0 user unknown", as some servers write it) is soft, not sender: neither
suppresses a reader on a guess, nor holds a whole batch for one reader's address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The classes are defined with the stored enums (a bounce row keeps its class); this module
# is what decides them.
from digest.delivery import replywords
from digest.models import Fault

__all__ = ["Fault", "Verdict", "classify_dsn", "classify_smtp", "enhanced_status"]


@dataclass(frozen=True)
class Verdict:
    fault: Fault
    status: str | None  # the enhanced status code that decided ("5.1.1"), if any
    permanent: bool  # a 5xx / permanent failure (the sender fails the row rather than retry)
    reason: str  # one line for the log and the operator


# Not inside a longer dotted number: "10.5.1.1" is an IP address, "5.1.1.2" no status code.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")
# A basic reply code standing alone ("550 ", "550-"), not part of a number or address.
_BASIC = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.@])")
_SENDER_CODES = {(1, 7), (1, 8)}
_SENDER_STEPS = ("session", "MAIL FROM")
_SIZE_CODES = {(3, 4), (2, 3)}  # message too big for the system / over the mailbox's limit
_SIZE_WORDS = re.compile(
    r"too (?:big|large|long)|(?:message|mail) size|size (?:limit|exceeds?)|exceeds? "
    r"(?:the )?(?:fixed |maximum |max )*(?:message )?size|maximum (?:message )?size",
    re.I,
)

_SENDER_WORDS = re.compile(
    r"sender (?:address |domain )?(?:is )?(?:rejected|refused|denied|unknown|invalid|"
    r"not (?:allowed|accepted|permitted))|sender verif\w* failed|"
    r"(?:unknown|invalid|bad) sender|sender domain (?:must exist|not found|does not exist)|"
    r"(?:envelope|mail) from (?:address )?(?:rejected|refused)|domain of sender address",
    re.I,
)
_POLICY_WORDS = re.compile(
    r"black ?list|block ?list|deny ?list|\b(?:rbl|dnsbl|uribl|surbl)\b|spamhaus|spamcop|"
    r"barracuda|sorbs|\bspam\b|spam ?filter|junk mail|unsolicited|\buce\b|reputation|"
    r"\bdmarc\b|\bspf\b|\bdkim\b|polic(?:y|ies)|\bblocked\b|\bbanned\b|content rejected|"
    r"(?<!not )listed (?:at|in|on|by)\b",
    re.I,
)
_NAMES = re.compile(r"<[^<>]*@[^<>]*>|[^\s<>]+@[^\s<>]+")
_REASON_LIMIT = 300
_QUIET_ACTIONS = ("delivered", "relayed", "expanded", "delayed")
_SOFT_READINGS = {
    replywords.SUSPENDED: "the mailbox is suspended or disabled: counted as a soft bounce",
    replywords.FULL: "the mailbox is full: counted as a soft bounce",
    replywords.SIZE: "the message is too large for the receiver: counted as a soft bounce",
}


def enhanced_status(text: str | None) -> str | None:
    """The RFC 3463 enhanced status code in a reply or field ("5.1.1"), leading zeros
    dropped; never one read out of an IP address or a longer dotted number."""
    match = _ENHANCED.search(text or "")
    return ".".join(str(int(g)) for g in match.groups()) if match else None


def classify_smtp(code: int | None, reply: str | None, step: str | None) -> Verdict:
    """Whose fault the server's ``reply`` (with its basic ``code``) to ``step`` is.

    ``step`` is "session" (connect, greeting, EHLO, TLS, AUTH), "MAIL FROM", "RCPT TO",
    "DATA", or None (read as a reply about the recipient). ``code`` None is a dropped
    connection or a timeout: soft and temporary.
    """
    text = _one_line(reply)
    status = enhanced_status(text)
    if step == "session" and code is None:
        # Could not connect or the greeting never came: no reader was named yet.
        return Verdict(Fault.sender, status, False,
                       _reason("could not open a session with our SMTP server", step, text))
    if code is None:
        return Verdict(Fault.soft, status, False,
                       _reason("no reply (connection dropped or timed out)", step, text))
    if code < 400:
        return Verdict(Fault.none, status, False, _reason(f"accepted ({code})", step, text))
    permanent = code >= 500
    if permanent and step != "session" and _too_large(code, status, text, step):
        return Verdict(Fault.message, status, True, _reason(
            "the message is larger than the server accepts: only this one fails, nobody is "
            "suppressed; shorten the digest or raise the server's size limit", step, text))
    if step in _SENDER_STEPS:
        # Whatever the code says, a refusal before any recipient is named is about us.
        return Verdict(Fault.sender, status, permanent,
                       _reason("refused our sender or session: check the sending set-up",
                               step, text))
    fault, why = _judge(status, text, temporary=not permanent)
    return Verdict(fault, status, permanent, _reason(why, step, text))


def classify_dsn(status: str | None, diagnostic: str | None,
                 action: str | None = "failed") -> Verdict:
    """Whose fault one recipient's block of a bounce report is: its ``Status:`` field, its
    Diagnostic-Code text (with or without the "smtp;" type) and its ``Action``.

    The enhanced code of the reply quoted in the diagnostic beats the Status field; a
    delivered/relayed/expanded recipient and a delay warning are not failures.
    """
    action = (action or "").strip().lower() or None
    text = _one_line(diagnostic)
    said = enhanced_status(text)
    own = enhanced_status(status)
    # A generic x.0.0 in the reply tells less than a precise Status field of the same class.
    if said and own and said.endswith(".0.0") and said[0] == own[0]:
        said = None
    decided = said or own
    if decided is None:
        basic = _BASIC.search(text)
        decided = f"{basic.group(1)[0]}.0.0" if basic else None
    klass = decided[0] if decided else None
    if action in _QUIET_ACTIONS or (action is None and klass == "2") or klass == "2":
        what = action or "delivered"
        return Verdict(Fault.none, decided, False, _reason(f"not a failure ({what})", None, text))
    permanent = action == "failed" or (action is None and klass != "4")
    if decided is None:
        return Verdict(Fault.soft, None, permanent,
                       _reason("failed without a status code: not suppressed", None, text))
    fault, why = _judge(decided, text, temporary=klass == "4", report=True)
    return Verdict(fault, decided, permanent or fault is Fault.hard, _reason(why, None, text))


def _judge(status: str | None, text: str, *, temporary: bool,
           report: bool = False) -> tuple[Fault, str]:
    """The fault of a refusal about a recipient (RCPT TO, DATA, or a report's block).

    The reply's words beat its enhanced code both ways (ADR 0024): a suspended, full or
    size-limited mailbox is soft under any code, a rate limit too in a bounce report
    (``report``; at send time it pauses the domain so the row is retried), and words saying
    the address does not exist make a hard bounce under a 5.7.x or 5.3.x code; in a bounce
    report even under a 4.x.x Status.
    """
    subject, detail = _parts(status)
    # Words are read from the server's sentence, not from the addresses in it:
    # a reader at blocked.example is not a block-list refusal.
    text = _NAMES.sub(" ", text)
    if (subject, detail) in _SENDER_CODES or _SENDER_WORDS.search(text):
        return Fault.sender, "refused our sender address: check the envelope sender's domain"
    said = replywords.reading(text)
    if temporary:
        if report and said == replywords.UNKNOWN:
            return Fault.hard, "the address does not exist (the reply's words, over a 4.x.x)"
        return Fault.soft, "temporary failure: try again later"
    if said in _SOFT_READINGS:
        return Fault.soft, _SOFT_READINGS[said]
    if _POLICY_WORDS.search(text):
        return Fault.policy, "refused by the receiver's policy or our reputation: not suppressed"
    if said == replywords.RATE:
        if not report:
            # At send time a rate limit is retried: the domain paused, the row deferred.
            return Fault.policy, "the receiver limits our sending rate: the domain paused"
        return Fault.soft, "the receiver limits our sending rate: counted as a soft bounce"
    if subject == 7:
        if said == replywords.UNKNOWN:
            return Fault.hard, "the address does not exist (the reply's words, over a 5.7.x)"
        return Fault.policy, "refused by the receiver's policy or our reputation: not suppressed"
    if (subject, detail) == (2, 2):
        return Fault.soft, "the mailbox is full: counted as a soft bounce"
    if subject == 5:
        if said in (replywords.UNKNOWN, replywords.UNAVAILABLE):
            return Fault.soft, "a protocol code that says the address is unknown: not suppressed"
        return Fault.sender, "a protocol error in our session: check the sending set-up"
    if said == replywords.UNKNOWN:
        return Fault.hard, "the address does not exist"
    if (subject, detail) == (2, 1):
        return Fault.soft, "the mailbox is disabled (5.2.1): counted as a soft bounce"
    if said == replywords.UNAVAILABLE:
        return Fault.hard, "the mailbox is unavailable (the address does not exist)"
    if subject == 1 and detail != 0:
        return Fault.hard, "the address does not exist"
    return Fault.soft, "a permanent failure we cannot tie to the address: not suppressed"


def _too_large(code: int, status: str | None, text: str, step: str | None) -> bool:
    """A refusal of the message's size: 5.3.4 / 5.2.3, or a 552 with no other status at
    MAIL FROM (RFC 1870's answer to SIZE=) or whose words say so."""
    if status is not None and status[0] == "5":
        return _parts(status) in _SIZE_CODES
    words = _SIZE_WORDS.search(_NAMES.sub(" ", text)) is not None
    return code == 552 and (step == "MAIL FROM" or words)


def _parts(status: str | None) -> tuple[int | None, int | None]:
    if not status:
        return None, None
    _, subject, detail = (int(p) for p in status.split("."))
    return subject, detail


def _one_line(text: str | None) -> str:
    return " ".join(str(text or "").split())


def _reason(why: str, step: str | None, text: str) -> str:
    where = f" at {step}" if step else ""
    line = f"{why}{where}: {text}" if text else f"{why}{where}"
    return line if len(line) <= _REASON_LIMIT else line[:_REASON_LIMIT - 3] + "..."
