"""Whole bounce messages, as the big providers send them, read with ADR 0024's rules: the
reply's words beat the Status field both ways, qmail's "(#5.1.1)" is a code, and a report
with only per-message fields is read from its text."""

from __future__ import annotations

import pytest

from digest.bounces import parse_report
from digest.errors import BounceError
from digest.models import Fault

DSN = """\
From: Mail Delivery Subsystem <MAILER-DAEMON@mx.newsroom.example.org>
To: bounces+{delivery}@newsroom.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

The mail system could not deliver your message.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.newsroom.example.org

Final-Recipient: rfc822; {address}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {reply}

--B--
"""


def dsn(address: str, status: str, reply: str, delivery: int = 7) -> bytes:
    return DSN.format(address=address, status=status, reply=reply,
                      delivery=delivery).encode()


def only(raw: bytes):
    report = parse_report(raw)
    assert report is not None and len(report.recipients) == 1
    return report.recipients[0]


def test_gmails_disabled_account_report_is_soft():
    got = only(dsn("reader@gmail.com", "5.2.1",
                   "550-5.2.1 The email account that you tried to reach is disabled. Learn "
                   "more at https://support.google.com/mail/?p=DisabledUser z1si - gsmtp"))
    assert (got.final_recipient, got.kind, got.status) == ("reader@gmail.com", Fault.soft, "5.2.1")


def test_a_full_mailbox_reported_under_5_1_1_is_soft():
    got = only(dsn("reader@example.net", "5.1.1", "552 5.1.1 <reader@example.net> Mailbox full"))
    assert got.kind is Fault.soft


def test_a_rate_limit_reported_as_permanent_is_soft():
    got = only(dsn("reader@gmx.net", "5.0.0",
                   "554-Transaction failed 554 Too many connections, try again later"))
    assert got.kind is Fault.soft


def test_a_policy_refusal_under_5_0_0_is_policy():
    got = only(dsn("reader@outlook.com", "5.0.0",
                   "550 5.0.0 Service unavailable; Client host [192.0.2.1] blocked using "
                   "Spamhaus"))
    assert got.kind is Fault.policy


def test_a_report_that_gave_up_under_4_x_x_whose_reply_says_no_such_user_is_hard():
    got = only(dsn("reader@example.net", "4.4.7", "550 <reader@example.net>: no such user"))
    assert (got.kind, got.verdict.permanent) == (Fault.hard, True)


QMAIL = """\
From: MAILER-DAEMON@mail.example.net
To: bounces+{delivery}@newsroom.example.org
Subject: failure notice

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{address}>:
{reason}

--- Below this line is a copy of the message.

Message-ID: <digest.3.{delivery}@newsroom.example.org>
Subject: Your weekly digest
"""


def qmail(address: str, reason: str, delivery: int = 9) -> bytes:
    return QMAIL.format(address=address, reason=reason, delivery=delivery).encode()


def test_qmails_reason_ending_in_an_enhanced_code_is_read_with_that_code():
    got = only(qmail("reader@example.net", "Sorry, no mailbox here by that name. (#5.1.1)"))
    assert (got.final_recipient, got.kind, got.status) == ("reader@example.net", Fault.hard,
                                                           "5.1.1")


def test_qmails_over_quota_under_a_5_1_1_code_is_soft():
    got = only(qmail("reader@example.net", "user over quota. (#5.1.1)"))
    assert (got.kind, got.status) == (Fault.soft, "5.1.1")


def test_a_qmail_reason_without_a_code_stays_soft_never_hard_from_words_alone():
    got = only(qmail("reader@example.net", "Sorry, no mailbox here by that name."))
    assert got.kind is Fault.soft


PER_MESSAGE_ONLY = """\
From: Mail Delivery Subsystem <MAILER-DAEMON@nsmail.example.com>
To: bounces+{delivery}@newsroom.example.org
Subject: Mail System Error - Returned Mail
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This Message was undeliverable due to the following reason:

<reader@example.com>:
550 5.1.1 <reader@example.com>... User unknown

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; nsmail.example.com
Arrival-Date: Wed, 24 May 2000 16:50:34 -0400

--B--
"""


def test_a_report_with_only_per_message_fields_is_read_from_its_text():
    report = parse_report(PER_MESSAGE_ONLY.format(delivery=5).encode())
    assert report is not None and report.verp_ids == [5]
    got = report.recipients[0]
    assert (got.final_recipient, got.kind, got.status) == ("reader@example.com", Fault.hard,
                                                           "5.1.1")


def test_a_report_with_recipient_blocks_but_no_action_or_status_is_still_refused():
    raw = dsn("reader@example.net", "5.1.1", "550 5.1.1 user unknown")
    raw = raw.replace(b"Action: failed\n", b"").replace(b"Status: 5.1.1\n", b"")
    with pytest.raises(BounceError, match="no recipient block"):
        parse_report(raw)
