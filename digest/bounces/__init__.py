"""Bounces: read a bounce (RFC 3464 report, a mail system's notice, a provider's
notification), tie it to its delivery, and act on the one classifier's verdict.

``parse`` reads RFC 3464 reports, ``text`` the bounces without a delivery-status part
(Amazon SES, plain-text notices, flufl.bounce's detectors), ``process`` acts on one bounce,
``mailboxes`` reads Maildirs, mboxes and message files.
"""

from digest.bounces.mailboxes import FORMATS, BounceReport, open_mailbox, process_mailbox
from digest.bounces.parse import (
    MAX_BOUNCE_BYTES,
    DeliveryStatusReport,
    RecipientStatus,
    parse_report,
)
from digest.bounces.process import (
    DUPLICATE,
    RECORDED,
    UNMATCHED,
    BounceOutcome,
    process_bounce_message,
)

__all__ = [
    "DUPLICATE", "FORMATS", "MAX_BOUNCE_BYTES", "RECORDED", "UNMATCHED", "BounceOutcome",
    "BounceReport", "DeliveryStatusReport", "RecipientStatus",
    "open_mailbox", "parse_report", "process_bounce_message", "process_mailbox",
]
