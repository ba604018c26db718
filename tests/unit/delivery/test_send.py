"""Delivery decisions read from SMTP replies alone: no database, no server."""

from __future__ import annotations

from digest.delivery import (
    Fault,
    classify_smtp,
    enhanced_status,
)


def test_enhanced_status_code_is_read_from_the_reply():
    assert enhanced_status("550 5.1.1 <x@y>: Recipient address rejected") == "5.1.1"
    assert enhanced_status("451 Try again") is None


def test_only_the_servers_reply_to_rcpt_or_data_decides_a_policy_pause():
    def fault(step, reply):
        return classify_smtp(int(reply[:3]), reply, step).fault

    assert fault("RCPT TO", "550 5.7.1 Blocked") is Fault.policy
    assert fault("DATA", "550 5.7.1 Unfortunately, messages from [198.51.100.7] weren't sent. "
                         "Please contact your Internet service provider ... block list (S3150)"
                 ) is Fault.policy
    # The session or MAIL FROM refused: our server's affair, no recipient domain to pause.
    assert fault("session", "554 5.7.1 go away") is Fault.sender
    assert fault("MAIL FROM", "553 5.7.1 Sender rejected") is Fault.sender
    assert fault("RCPT TO", "550 5.2.1 disabled") is Fault.soft  # ADR 0024
    assert fault("RCPT TO", "550 5.1.1 no such user") is Fault.hard
