"""The reply's words beat its enhanced code, as the reference bounce classifiers read them
(ADR 0024): replies as the big providers write them, in bounce reports and at RCPT TO."""

import pytest

from digest.delivery import replywords
from digest.delivery.classify import Fault, classify_dsn, classify_smtp

# --- suspended, disabled or inactive mailboxes: soft whatever the code says -------------------


@pytest.mark.parametrize("status, diagnostic", [
    # Gmail
    ("5.2.1", "smtp; 550-5.2.1 The email account that you tried to reach is disabled. Learn "
              "more at https://support.google.com/mail/?p=DisabledUser a1si123.456 - gsmtp"),
    # Yahoo, under a generic code
    ("5.0.0", "smtp; 554 delivery error: dd Sorry your message to a@yahoo.com cannot be "
              "delivered. This account has been disabled or discontinued [#102]. - mta1"),
    # AT&T / sendmail with a Status 5.1.1
    ("5.1.1", "smtp; 550 [SUSPEND] Mailbox currently suspended - Please contact correspondent "
              "directly"),
    # QQ
    ("5.0.0", "smtp; 551 <a@qq.com> is a deactivated mailbox"),
    # Outlook.com
    ("5.2.1", "smtp; 550 5.2.1 Mailbox is inactive (AccountInactive)"),
    # GMX / Web.de
    ("5.1.1", "smtp; 550 Requested action not taken: account disabled"),
    ("5.1.1", "smtp; 550 5.1.1 The account has been disabled"),
    # Mail.ru
    ("5.0.0", "smtp; 550 Message was not accepted -- user suspended"),
])
def test_a_suspended_disabled_or_inactive_mailbox_is_soft_whatever_the_code(status, diagnostic):
    verdict = classify_dsn(status, diagnostic, "failed")
    assert verdict.fault is Fault.soft
    assert verdict.permanent is True


def test_a_5_2_1_without_words_is_a_disabled_mailbox_and_soft():
    assert classify_smtp(550, "550 5.2.1 Mailbox not available", "RCPT TO").fault is Fault.soft
    assert classify_dsn("5.2.1", None, "failed").fault is Fault.soft


# --- rate limits: soft whatever the code says -------------------------------------------------


@pytest.mark.parametrize("status, diagnostic", [
    # Gmail under 5.2.1
    ("5.2.1", "smtp; 550-5.2.1 The user you are trying to contact is receiving mail at a rate "
              "that prevents additional messages from being delivered. - gsmtp"),
    # Under a 5.7.x without policy words
    ("5.7.1", "smtp; 550 5.7.1 Speeding: slow down and try again later"),
    ("5.0.0", "smtp; 554 5.0.0 Too many messages from your IP for this recipient"),
    # Under a 5.1.1
    ("5.1.1", "smtp; 550 5.1.1 Rate limit exceeded for this recipient"),
    # GMX
    ("5.0.0", "smtp; 554-Transaction failed 554-Too many connections, try again later"),
])
def test_rate_limiting_is_soft_whatever_the_code(status, diagnostic):
    assert classify_dsn(status, diagnostic, "failed").fault is Fault.soft


@pytest.mark.parametrize("reply", [
    "550 5.7.1 Rate limited: too many recipients, try later",
    "550 5.1.1 Rate limit exceeded for this recipient",
    "550-5.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
    "additional messages from being delivered.",
])
def test_rate_limiting_at_send_time_pauses_the_domain_so_the_row_is_retried_never_hard(reply):
    # Soft would fail the row for good (a 5xx): the reader would lose this digest.
    verdict = classify_smtp(550, reply, "RCPT TO")
    assert verdict.fault is Fault.policy


# --- full mailboxes: soft whatever the code says ------------------------------------------------


@pytest.mark.parametrize("status, diagnostic", [
    # Gmail
    ("5.2.2", "smtp; 552-5.2.2 The email account that you tried to reach is over quota."),
    # qmail-toaster writes its full mailbox under 5.1.1
    ("5.1.1", "smtp; 550 5.1.1 user over quota. (#5.1.1)"),
    ("5.1.1", "smtp; 552 5.1.1 <a@example.org> Mailbox full"),
    # Yahoo
    ("5.0.0", "smtp; 552 1 Requested mail action aborted, mailbox is full"),
    # GMX
    ("5.0.0", "smtp; 552-Requested mail action aborted: exceeded storage allocation"),
    # Outlook / Exchange
    ("5.2.2", "smtp; 554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException"),
    ("5.1.1", "smtp; 550 5.1.1 quota exceeded"),
])
def test_a_full_mailbox_is_soft_whatever_the_code(status, diagnostic):
    assert classify_dsn(status, diagnostic, "failed").fault is Fault.soft


def test_a_message_too_large_under_a_5_1_1_status_is_soft():
    verdict = classify_dsn("5.1.1", "smtp; 550 RCPT TO:<a@b.example> max message size exceeded")
    assert verdict.fault is Fault.soft


# --- policy refusals under 5.0.0 or 5.7.x: not the reader's mailbox -----------------------------


@pytest.mark.parametrize("status, diagnostic", [
    ("5.0.0", "smtp; 554 5.0.0 Service unavailable; Client host [192.0.2.1] blocked using "
              "zen.spamhaus.org"),
    ("5.0.0", "smtp; 550 5.0.0 Your message was rejected as spam"),
    ("5.7.1", "smtp; 554 5.7.1 Message rejected due to local policy"),
    # Outlook
    ("5.7.1", "smtp; 550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please "
              "contact your Internet service provider since part of their network is on our "
              "block list (S3150)."),
    # Status 5.1.1, but the words are a block list: the words win
    ("5.1.1", "smtp; 550 5.0.0 <a@example.org>... blacklisted by example RBL"),
    # Gmail: a rate of unsolicited mail is policy, not a rate limit
    ("5.7.1", "smtp; 550-5.7.1 Our system has detected an unusual rate of unsolicited mail "
              "originating from your IP address."),
])
def test_a_policy_refusal_under_5_0_0_or_5_7_x_is_policy_never_hard(status, diagnostic):
    assert classify_dsn(status, diagnostic, "failed").fault is Fault.policy


# --- words saying the address does not exist: hard, even under other codes -----------------------


@pytest.mark.parametrize("status, diagnostic", [
    # Gmail (older replies came with 5.7.1)
    ("5.7.1", "smtp; 550 5.7.1 No such user c18si2365148hub"),
    # qmail's badrcptto under #5.7.1
    ("5.7.1", "smtp; 553 sorry, badrcptto(user mail-box not found) (#5.7.1)"),
    # sendmail under 5.3.0
    ("5.3.0", "smtp; 553 5.3.0 <a@example.org>... Address does not exist"),
    # Yahoo
    ("5.0.0", "smtp; 554 delivery error: dd This user doesn't have a yahoo.com account "
              "(a@yahoo.com) [0] - mta1"),
    # Exim / Cambridge
    ("5.0.0", "smtp; 550-<a@example.org> is not a known user on this system"),
    # Apple
    ("5.1.6", "smtp; 550 5.1.6 recipient no longer on server: a@me.com"),
])
def test_words_saying_the_address_does_not_exist_are_hard_whatever_the_code(status, diagnostic):
    verdict = classify_dsn(status, diagnostic, "failed")
    assert (verdict.fault, verdict.permanent) == (Fault.hard, True)


@pytest.mark.parametrize("status, diagnostic", [
    ("4.4.7", "smtp; 550 no such user here"),
    ("4.0.0", "smtp; 550 <a@example.org>: User unknown in virtual mailbox table"),
    ("4.4.1", "X-Postfix; mailbox a@example.org does not exist"),
])
def test_a_failed_report_with_a_4_x_x_status_whose_words_say_unknown_is_hard(status, diagnostic):
    verdict = classify_dsn(status, diagnostic, "failed")
    assert (verdict.fault, verdict.permanent) == (Fault.hard, True)


def test_a_4xx_reply_at_send_time_stays_soft_and_temporary_even_with_unknown_words():
    # At RCPT TO the server asks us to retry; only a report that gave up may be read as hard.
    verdict = classify_smtp(450, "450 4.1.1 <a@example.org>: User unknown, try again", "RCPT TO")
    assert (verdict.fault, verdict.permanent) == (Fault.soft, False)


def test_a_delay_warning_with_unknown_words_is_still_not_a_failure():
    assert classify_dsn("4.4.7", "smtp; 450 user unknown", "delayed").fault is Fault.none


# --- the reading itself ----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The email account that you tried to reach is disabled", replywords.SUSPENDED),
    ("Mailbox is over quota", replywords.FULL),
    ("Message too large for this recipient", replywords.SIZE),
    ("speeding", replywords.RATE),
    ("No such user here", replywords.UNKNOWN),
    ("Message accepted for delivery", None),
    ("", None),
])
def test_reading_names_what_the_words_say(text, expected):
    assert replywords.reading(text) == expected


def test_a_suspended_mailbox_that_also_sounds_unknown_is_read_as_suspended_never_hard():
    # "invalid/inactive user" (Sisimai's suspend list): when in doubt, never suppress.
    assert classify_dsn("5.1.1", "smtp; 550 5.1.1 invalid/inactive user").fault is Fault.soft


def test_mailbox_unavailable_under_a_5_7_x_stays_policy_and_under_5_2_1_soft():
    # RFC 5321's generic 550 text is too weak to beat a policy code or a disabled mailbox.
    assert classify_dsn("5.7.1", "smtp; 550 5.7.1 Requested action not taken: mailbox "
                                 "unavailable").fault is Fault.policy
    assert classify_dsn("5.2.1", "smtp; 550 5.2.1 Requested action not taken: mailbox "
                                 "unavailable").fault is Fault.soft
    # Bare, as Outlook.com writes it for an address that does not exist: hard, as before.
    assert classify_smtp(550, "550 Requested action not taken: mailbox unavailable",
                         "RCPT TO").fault is Fault.hard


def test_a_sender_domain_that_does_not_exist_is_our_fault_never_the_readers():
    verdict = classify_dsn("5.0.0", "smtp; 550 Domain of sender address "
                                    "bounces+7@news.example does not exist")
    assert verdict.fault is Fault.sender


@pytest.mark.parametrize("status, diagnostic", [
    ("5.7.1", "smtp; 554 5.7.1 <a@inbox.example>: Recipient address rejected: Nonexistent user"),
    ("5.0.0", "smtp; 550 550 Address unknown (state 14)."),
    # Lotus Domino: "not listed" is no block list
    ("5.1.1", "X-Notes; User a (a@example.com) not listed in public Name & Address Book"),
])
def test_nonexistent_user_address_unknown_and_not_listed_in_a_directory_are_hard(
        status, diagnostic):
    assert classify_dsn(status, diagnostic, "failed").fault is Fault.hard


def test_listed_in_a_block_list_is_still_policy():
    assert classify_dsn("5.0.0", "smtp; 554 Your IP is listed in zen.spamhaus.org",
                        "failed").fault is Fault.policy


@pytest.mark.parametrize("diagnostic", [
    "smtp; 550 Client IP address unknown: no reverse DNS",
    "smtp; 550 Client host unknown, see your DNS",
])
def test_words_about_our_client_address_or_host_are_never_a_hard_bounce(diagnostic):
    assert classify_dsn("5.0.0", diagnostic, "failed").fault is not Fault.hard
