"""The one classifier of SMTP replies and delivery-status codes: pure, no services."""

import pytest

from digest.delivery.classify import Fault, Verdict, classify_dsn, classify_smtp, enhanced_status

# --- enhanced_status -----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("550 5.1.1 <a@example.org>: user unknown", "5.1.1"),
    ("550-5.7.1 [192.0.2.1] blocked", "5.7.1"),
    ("452 4.2.2 Mailbox full", "4.2.2"),
    ("5.01.001", "5.1.1"),
    ("smtp; 550 #5.1.0 Address rejected.", "5.1.0"),
    ("Status: 5.1.1.", "5.1.1"),
])
def test_enhanced_status_finds_the_rfc3463_code(text, expected):
    assert enhanced_status(text) == expected


@pytest.mark.parametrize("text", [
    "550 rejected: client 10.5.1.1 not allowed",
    "host 192.5.1.1 said: 550 go away",
    "version 5.1.1.2 of the filter",
    "550 no code here",
    "",
    None,
])
def test_enhanced_status_never_reads_a_code_out_of_an_ip_or_longer_number(text):
    assert enhanced_status(text) is None


# --- classify_smtp: the step decides first ---------------------------------------------------


@pytest.mark.parametrize("step", ["session", "MAIL FROM"])
@pytest.mark.parametrize("code, reply", [
    (550, "550 5.1.1 <bounces+1@news.example>: user unknown"),
    (554, "554 5.7.1 Client host rejected: blacklisted"),
    (421, "421 4.3.2 Service not available"),
    (535, "535 5.7.8 Authentication credentials invalid"),
    (550, "550 5.1.8 Sender address rejected: Domain not found"),
])
def test_a_refusal_at_the_session_or_mail_from_is_the_senders_fault_whatever_the_code(
        step, code, reply):
    verdict = classify_smtp(code, reply, step)
    assert verdict.fault is Fault.sender
    assert verdict.permanent is (code >= 500)


def test_no_reply_at_all_is_a_temporary_soft_failure():
    verdict = classify_smtp(None, None, "RCPT TO")
    assert verdict == Verdict(Fault.soft, None, False, verdict.reason)
    assert "no reply" in verdict.reason


def test_an_accepted_reply_is_not_a_failure():
    assert classify_smtp(250, "250 2.1.5 Ok", "RCPT TO").fault is Fault.none


# --- classify_smtp: replies about a recipient -----------------------------------------------


@pytest.mark.parametrize("step", ["RCPT TO", "DATA", None])
@pytest.mark.parametrize("reply, status", [
    ("550 5.1.1 <a@example.org>: Recipient address rejected: User unknown", "5.1.1"),
    ("550 5.1.2 Host unknown", "5.1.2"),
    ("550 5.1.6 Mailbox has moved", "5.1.6"),
])
def test_a_5_1_x_about_the_recipient_is_hard(step, reply, status):
    verdict = classify_smtp(550, reply, step)
    assert (verdict.fault, verdict.status, verdict.permanent) == (Fault.hard, status, True)


@pytest.mark.parametrize("reply", [
    "553 5.1.7 The sender address is malformed",
    "550 5.1.8 Bad sender's system address",
    "550 5.1.0 Sender rejected",
    "550 5.1.1 <bounces+7@news.example>: Sender address rejected: User unknown",
    "550 5.1.1 Sender verify failed",
    "550 5.1.0 <bounces+7@news.example> sender rejected",
])
def test_a_5_1_x_about_our_sender_is_the_senders_fault_never_hard(reply):
    assert classify_smtp(550, reply, "RCPT TO").fault is Fault.sender


@pytest.mark.parametrize("reply", [
    "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using Spamhaus",
    "550 5.7.26 Unauthenticated email is not accepted due to DMARC policy",
    "550 5.7.23 SPF validation failed",
    "554 5.7.1 Message rejected as spam",
    "550 5.1.1 Your IP is blacklisted",  # the words win over the code: never suppress
    "554 Your host is listed at bl.example.net",
    "550 Rejected due to poor reputation",
])
def test_block_lists_spam_reputation_dmarc_spf_are_policy(reply):
    verdict = classify_smtp(550, reply, "RCPT TO")
    assert (verdict.fault, verdict.permanent) == (Fault.policy, True)


@pytest.mark.parametrize("code, reply", [
    (552, "552 5.2.2 Mailbox full"),
    (452, "452 4.2.2 The email account that you tried to reach is over quota"),
    (550, "550 Mailbox full, try later"),
])
def test_a_full_mailbox_is_soft(code, reply):
    verdict = classify_smtp(code, reply, "RCPT TO")
    assert verdict.fault is Fault.soft
    assert verdict.permanent is (code >= 500)


@pytest.mark.parametrize("reply", [
    "450 4.1.1 user unknown (try again)",
    "421 4.7.0 Try again later, closing connection",
    "451 4.3.0 Temporary lookup failure",
    "450 4.7.1 Greylisted, see policy page",
])
def test_any_4xx_about_a_recipient_is_soft_and_temporary(reply):
    verdict = classify_smtp(int(reply[:3]), reply, "RCPT TO")
    assert (verdict.fault, verdict.permanent) == (Fault.soft, False)


def test_a_5_5_x_protocol_error_is_the_senders_fault():
    verdict = classify_smtp(554, "554 5.5.1 Error: no valid recipients / protocol error", "DATA")
    assert (verdict.fault, verdict.status) == (Fault.sender, "5.5.1")


def test_a_5_5_x_that_says_user_unknown_is_soft_neither_hard_nor_a_held_batch():
    assert classify_smtp(550, "550 5.5.0 User unknown", "RCPT TO").fault is Fault.soft


@pytest.mark.parametrize("reply", [
    "550 User unknown",
    "550 No such user here",
    "550 Requested action not taken: mailbox unavailable",
    "550 <a@example.org>: mailbox does not exist",
    "550 Invalid recipient <a@example.org>",
    "550 5.0.0 <a@example.org>... User unknown",
])
def test_a_bare_550_that_says_the_address_is_unknown_is_hard(reply):
    assert classify_smtp(550, reply, "RCPT TO").fault is Fault.hard


@pytest.mark.parametrize("reply", [
    "550 Message rejected",
    "554 Transaction failed",
    "550 5.0.0 Unrouteable address",
    "550 5.1.0 Address rejected",
    "550 5.4.1 Recipient address rejected: Access denied",
    "550",
])
def test_a_permanent_refusal_we_cannot_read_fails_the_row_but_never_suppresses(reply):
    verdict = classify_smtp(int(reply[:3]), reply, "RCPT TO")
    assert (verdict.fault, verdict.permanent) == (Fault.soft, True)


def test_a_bare_550_with_policy_words_is_policy():
    assert classify_smtp(550, "550 Blocked by our spam filter", "DATA").fault is Fault.policy


def test_the_reason_is_one_bounded_line_naming_the_step_and_the_reply():
    verdict = classify_smtp(550, "550 5.1.1 user\r\n unknown " + "x" * 1000, "RCPT TO")
    assert "\n" not in verdict.reason and len(verdict.reason) <= 300
    assert "at RCPT TO" in verdict.reason and "550 5.1.1 user unknown" in verdict.reason


# --- classify_dsn ----------------------------------------------------------------------------


def test_a_dsn_5_1_1_with_a_user_unknown_reply_is_hard():
    verdict = classify_dsn("5.1.1", "smtp; 550 5.1.1 <a@example.org>: user unknown")
    assert (verdict.fault, verdict.status, verdict.permanent) == (Fault.hard, "5.1.1", True)


def test_the_servers_own_reply_beats_the_status_field():
    verdict = classify_dsn("5.1.1", "smtp; 550 5.7.1 Your IP 192.0.2.1 is blacklisted")
    assert (verdict.fault, verdict.status) == (Fault.policy, "5.7.1")


def test_a_status_5_1_1_with_blacklist_words_and_no_code_in_the_reply_is_policy():
    assert classify_dsn("5.1.1", "smtp; 550 blacklisted by example RBL").fault is Fault.policy


@pytest.mark.parametrize("status, diagnostic", [
    ("5.1.7", "smtp; 553 5.1.7 Invalid sender address"),
    ("5.1.8", "smtp; 553 5.1.8 <bounces+3@news.example>: Sender address rejected: "
              "Domain not found"),
    ("5.1.0", "smtp; 550 5.1.0 Sender rejected"),
    ("5.1.1", "smtp; 550 Sender address rejected: undeliverable address"),
])
def test_a_dsn_about_our_sender_is_never_hard(status, diagnostic):
    assert classify_dsn(status, diagnostic).fault is Fault.sender


def test_a_generic_x_0_0_in_the_reply_gives_way_to_a_precise_status_field():
    verdict = classify_dsn("5.1.1", "smtp; 550 5.0.0 <a@example.org>... no such user")
    assert (verdict.fault, verdict.status) == (Fault.hard, "5.1.1")


def test_a_dsn_mailbox_full_or_disabled_is_soft():
    assert classify_dsn("5.2.2", "smtp; 552 5.2.2 Mailbox full").fault is Fault.soft
    assert classify_dsn("5.2.1", "smtp; 550 5.2.1 account disabled").fault is Fault.soft


def test_a_report_that_failed_after_temporary_errors_is_soft_but_permanent():
    verdict = classify_dsn("5.0.0", "smtp; 451 4.4.1 connection timed out", "failed")
    assert (verdict.fault, verdict.status, verdict.permanent) == (Fault.soft, "4.4.1", True)


@pytest.mark.parametrize("action, status", [
    ("delivered", "2.0.0"), ("relayed", "2.0.0"), ("expanded", "2.0.0"), ("delayed", "4.4.7"),
])
def test_delivered_relayed_expanded_and_delay_warnings_are_not_failures(action, status):
    verdict = classify_dsn(status, None, action)
    assert (verdict.fault, verdict.permanent) == (Fault.none, False)


def test_a_failed_recipient_without_any_code_is_soft_never_hard():
    # Words alone, with no reply code at all, are a guess: never suppress on a guess.
    verdict = classify_dsn(None, "the mailbox user unknown", "failed")
    assert (verdict.fault, verdict.permanent) == (Fault.soft, True)
    assert classify_dsn(None, None, "failed") == Verdict(
        Fault.soft, None, True, "failed without a status code: not suppressed")


def test_a_dsn_status_read_from_the_basic_code_of_a_reply():
    verdict = classify_dsn(None, "smtp; 550 no such user here", None)
    assert (verdict.fault, verdict.status, verdict.permanent) == (Fault.hard, "5.0.0", True)


def test_a_dsn_diagnostic_with_an_ip_does_not_take_it_for_a_status():
    verdict = classify_dsn("5.0.0", "smtp; host 10.5.1.1 said: 550 message rejected")
    assert (verdict.fault, verdict.status) == (Fault.soft, "5.0.0")


@pytest.mark.parametrize(("reply", "step"), [
    ("552 5.3.4 Message size exceeds fixed maximum message size", "MAIL FROM"),
    ("552 Message size exceeds fixed maximum message size", "MAIL FROM"),  # RFC 1870, no status
    ("552 5.3.4 Message too big for system", "RCPT TO"),
    ("552 5.3.4 Error: message file too big", "DATA"),
    ("552 Message exceeds the maximum size", "DATA"),
    ("552 5.2.3 Message length exceeds administrative limit", "DATA"),
])
def test_a_size_refusal_at_any_step_is_the_message_s_fault_not_the_sender_s_nor_the_reader_s(
        reply, step):
    verdict = classify_smtp(int(reply[:3]), reply, step)
    assert (verdict.fault, verdict.permanent) == (Fault.message, True)
    assert "larger than the server accepts" in verdict.reason


@pytest.mark.parametrize(("reply", "step", "fault"), [
    ("552 5.2.2 Mailbox full", "RCPT TO", Fault.soft),  # a full mailbox is not a size refusal
    ("552 Requested mail action aborted: exceeded storage allocation", "DATA", Fault.soft),
    ("452 4.3.4 Message too big for now", "DATA", Fault.soft),  # temporary: retried
    ("554 5.7.1 Sender refused", "MAIL FROM", Fault.sender),
])
def test_refusals_that_only_look_like_size_keep_their_own_class(reply, step, fault):
    assert classify_smtp(int(reply[:3]), reply, step).fault is fault
