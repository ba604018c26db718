"""Bounces: RFC 3464 reports tied to their deliveries, on SQLite and PostgreSQL.

The sample reports (tests/bounce_reports.py) are about run 7, deliveries 101-104;
``sent_run`` creates exactly those rows.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from digest.bounces import (
    MAX_BOUNCE_BYTES,
    parse_report,
    process_bounce_message,
    process_mailbox,
)
from digest.delivery import send_deliveries
from digest.errors import BounceError, ValidationError
from digest.models import (
    Bounce,
    Delivery,
    DomainPause,
    Fault,
    Subscriber,
    Suppression,
    SuppressionReason,
    utcnow,
)
from digest.selection import plan_scheduled_run
from tests.bounce_reports import (
    ADDRESSES,
    DATA,
    HARD_5_1_1,
    add_sent_delivery,
    sample,
    seed_sample_deliveries,
)
from tests.factories import T0, Taxo, make_item, make_subscriber

DELAYED_4_2_2 = DATA / "postfix-4.2.2-delayed.eml"
POLICY_5_7_1 = DATA / "outlook-5.7.1-policy.eml"
BY_MESSAGE_ID = DATA / "sendmail-5.1.1-message-id-only.eml"
AUTOREPLY = DATA / "autoreply-out-of-office.eml"
QMAIL_PLAIN = DATA / "qmail-5.1.1-plain-text.eml"
EXIM_PLAIN = DATA / "exim-4.4.7-plain-text.eml"


@pytest.fixture
def sent_run(session):
    """Run 7: the four digests the sample reports are about, all accepted with 250."""
    return seed_sample_deliveries(session)


def process(session: Session, raw: bytes, *, settings, **kw):
    outcome = process_bounce_message(session, raw, settings=settings, **kw)
    session.commit()
    session.expire_all()
    return outcome


def state(session: Session, address: str) -> tuple[str, int, str | None]:
    session.expire_all()  # other sessions (mailbox runs, deliveries) may have changed the rows
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one()
    reason = session.scalars(select(Suppression.reason).where(Suppression.email == address)).first()
    return sub.status, sub.soft_bounces, reason


def bounce_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Bounce))


# --- one report at a time ------------------------------------------------------------------


def test_postfix_user_unknown_suppresses_the_address_and_fails_the_sent_delivery(session, sent_run, settings):
    outcome = process(session, HARD_5_1_1.read_bytes(), settings=settings)
    assert (outcome.result, outcome.kind, outcome.matched_by) == ("recorded", Fault.hard, "verp")
    assert (outcome.delivery_id, outcome.email, outcome.status_code) == (101, "gone@example.net", "5.1.1")
    assert outcome.suppressed
    assert state(session, "gone@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    delivery = session.get(Delivery, 101)
    # Failed now, and its history stays: when it was sent, what SMTP said, its Message-ID.
    assert delivery.status == "failed"
    assert delivery.sent_at == T0 + timedelta(minutes=30) and delivery.smtp_code == 250
    assert delivery.smtp_reply == "250 2.0.0 OK: queued as 1"  # the server's words, kept
    assert delivery.note.startswith("bounced after it was accepted: 5.1.1 ")
    assert delivery.message_id == "<digest.7.101@newsroom.example.org>"
    bounce = session.scalars(select(Bounce)).one()
    assert (bounce.delivery_id, bounce.email, bounce.status_code, bounce.kind) == (
        101, "gone@example.net", "5.1.1", Fault.hard)
    assert bounce.kind is Fault.hard and outcome.kind is Fault.hard
    assert session.scalars(select(Suppression)).one().reason is SuppressionReason.hard_bounce
    assert "User unknown in virtual mailbox table" in bounce.diagnostic
    # Nobody else is touched.
    assert state(session, "full@example.com") == ("active", 0, None)


def test_policy_rejection_is_recorded_reported_and_pauses_its_domain_but_never_suppresses(
        session, settings, sent_run):
    outcome = process(session, POLICY_5_7_1.read_bytes(), settings=settings)
    assert (outcome.result, outcome.kind, outcome.status_code) == ("recorded", Fault.policy, "5.7.1")
    assert not outcome.suppressed and "not suppressed" in outcome.reason
    assert "block list (S3150)" in outcome.diagnostic
    assert state(session, "strict@example.org") == ("active", 0, None)
    assert session.get(Delivery, 103).status == "sent"
    assert session.scalars(select(Bounce.kind)).all() == [Fault.policy]
    # The receiving domain is paused, as a 5.7.x at SMTP time would do; a repeat of the same
    # report is a duplicate and does not extend it.
    pause = session.scalars(select(DomainPause)).one()
    assert (pause.domain, pause.delivery_id) == ("example.org", 103)
    assert "5.7.1" in pause.reason and "example.org is paused until" in outcome.reason
    minutes = (pause.paused_until - utcnow()).total_seconds() / 60
    assert settings.policy_pause_minutes - 2 < minutes <= settings.policy_pause_minutes
    until = pause.paused_until
    assert process(session, POLICY_5_7_1.read_bytes(), settings=settings).result == "duplicate"
    assert session.scalars(select(DomainPause.paused_until)).one() == until


@pytest.fixture
def three_digests_to_full(session, sent_run):
    """full@example.com got deliveries 102, 202 and 302 (runs 7, 8, 9)."""
    sub = sent_run["full@example.com"]
    add_sent_delivery(session, 8, 202, sub)
    add_sent_delivery(session, 9, 302, sub)
    session.commit()
    return sub


def full_failed(delivery_id: int = 102) -> bytes:
    """The receiver gave up on a digest to the full mailbox (452 4.2.2, Action: failed)."""
    return sample(DELAYED_4_2_2, **{"Action: delayed": "Action: failed",
                                    "+102@": f"+{delivery_id}@"})


def test_failed_soft_reports_count_per_digest_and_suppress_at_the_threshold(
        session, settings, three_digests_to_full):
    assert settings.soft_bounce_threshold == 3
    first = process(session, full_failed(), settings=settings)
    assert (first.kind, first.status_code, first.suppressed) == (Fault.soft, "4.2.2", False)
    assert state(session, "full@example.com") == ("active", 1, None)
    assert session.get(Delivery, 102).status == "sent"  # never suppressed on a soft bounce

    second = process(session, full_failed(202), settings=settings)
    assert second.delivery_id == 202 and not second.suppressed
    assert state(session, "full@example.com") == ("active", 2, None)

    third = process(session, full_failed(302), settings=settings)
    assert third.suppressed and "3 of 3" in third.reason
    assert state(session, "full@example.com") == ("suppressed", 3, SuppressionReason.soft_bounces)


def test_soft_bounces_older_than_the_window_age_out_of_the_count(
        session, settings, three_digests_to_full):
    assert settings.soft_bounce_window_days == 30
    process(session, full_failed(), settings=settings)
    process(session, full_failed(202), settings=settings)
    assert state(session, "full@example.com") == ("active", 2, None)
    # Those two were reported 31 days ago: a third one now is the only one in the window.
    session.execute(update(Bounce).values(created_at=utcnow() - timedelta(days=31)))
    session.commit()
    third = process(session, full_failed(302), settings=settings)
    assert not third.suppressed and "1 of 3" in third.reason
    assert state(session, "full@example.com") == ("active", 1, None)


def test_a_delay_warning_changes_nothing_and_a_digest_given_up_on_twice_counts_once(
        session, sent_run, settings):
    warning = process(session, DELAYED_4_2_2.read_bytes(), settings=settings)
    assert warning.result == "unmatched" and "delay warning" in warning.reason
    assert warning.recipients == [{"address": "full@example.com", "status": "4.2.2",
                                   "class": "none"}]
    assert bounce_count(session) == 0
    process(session, full_failed(), settings=settings)
    expired = sample(DELAYED_4_2_2, **{"Action: delayed": "Action: failed",
                                      "Status: 4.2.2": "Status: 4.4.7",
                                      "452 4.2.2": "451 4.4.7",
                                      "Will-Retry-Until": "Last-Attempt-Date"})
    outcome = process(session, expired, settings=settings)
    assert (outcome.result, outcome.kind, outcome.status_code) == ("recorded", Fault.soft, "4.4.7")
    assert "already counted" in outcome.reason
    assert bounce_count(session) == 2
    assert state(session, "full@example.com") == ("active", 1, None)


def test_report_matched_only_by_the_original_message_id_reaches_its_delivery(session, sent_run, settings):
    report = parse_report(BY_MESSAGE_ID.read_bytes())
    assert report.verp_ids == [] and report.header_id is None  # nothing else to go by
    outcome = process(session, BY_MESSAGE_ID.read_bytes(), settings=settings)
    assert (outcome.result, outcome.kind, outcome.matched_by) == ("recorded", Fault.hard, "message-id")
    # The address we sent to is suppressed, not the forwarding target that bounced.
    assert outcome.email == "moved@example.net"
    assert state(session, "moved@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    diagnostic = session.scalars(select(Bounce.diagnostic)).one()
    assert "final recipient moved.on@example.com" in diagnostic


def test_message_id_of_another_run_or_an_unknown_delivery_matches_nothing(session, sent_run, settings):
    other_run = process(session, sample(BY_MESSAGE_ID, **{"digest.7.104@": "digest.8.104@"}), settings=settings)
    unknown = process(session, sample(BY_MESSAGE_ID, **{"digest.7.104@": "digest.7.999@"}), settings=settings)
    for outcome in (other_run, unknown):
        assert outcome.result == "unmatched" and outcome.delivery_id is None
    assert bounce_count(session) == 0
    assert state(session, "moved@example.net") == ("active", 0, None)


def test_x_digest_delivery_header_is_the_last_resort(session, sent_run, settings):
    raw = sample(BY_MESSAGE_ID, **{"Message-ID: <digest.7.104@newsroom.example.org>\n":
                                   "X-Digest-Delivery: 104\n"})
    outcome = process(session, raw, settings=settings)
    assert (outcome.matched_by, outcome.delivery_id, outcome.kind) == ("x-digest-delivery", 104, Fault.hard)


def test_envelope_recipient_given_by_a_webhook_ties_a_report_without_verp_headers(session, sent_run, settings):
    raw = sample(BY_MESSAGE_ID, **{"Message-ID: <digest.7.104@newsroom.example.org>\n": ""})
    assert process_bounce_message(session, raw, settings=settings).result == "unmatched"
    outcome = process(session, raw, envelope_to="bounces+104@newsroom.example.org", settings=settings)
    assert (outcome.matched_by, outcome.delivery_id) == ("verp", 104)


def test_autoreply_and_reports_about_unknown_deliveries_change_nothing(session, sent_run, settings):
    autoreply = process(session, AUTOREPLY.read_bytes(), settings=settings)
    assert autoreply.result == "unmatched" and "not a bounce" in autoreply.reason
    stranger = process(session, sample(HARD_5_1_1, **{"+101@": "+999@", "digest.7.101@": "x.1@",
                                                      "X-Digest-Delivery: 101": "X-Other: 1"}), settings=settings)
    assert stranger.result == "unmatched" and "names no delivery of ours" in stranger.reason
    success = process(session, sample(HARD_5_1_1, **{"Action: failed": "Action: delivered",
                                                     "Status: 5.1.1": "Status: 2.0.0"}), settings=settings)
    assert success.result == "unmatched" and "no failed recipient" in success.reason
    assert bounce_count(session) == 0
    assert {state(session, a) for a in ADDRESSES.values()} == {("active", 0, None)}


def test_a_plain_text_qmail_bounce_is_read_from_its_text_and_suppresses(session, sent_run, settings):
    outcome = process(session, QMAIL_PLAIN.read_bytes(), settings=settings)
    assert (outcome.result, outcome.kind, outcome.status_code, outcome.delivery_id) == (
        "recorded", Fault.hard, "5.1.1", 101)
    assert outcome.diagnostic == (
        "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown")
    assert state(session, "gone@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    assert process(session, QMAIL_PLAIN.read_bytes(), settings=settings).result == "duplicate"


def test_a_plain_text_exim_bounce_names_its_recipient_and_counts_as_soft(session, sent_run, settings):
    outcome = process(session, EXIM_PLAIN.read_bytes(), settings=settings)
    assert (outcome.result, outcome.kind, outcome.status_code, outcome.email) == (
        "recorded", Fault.soft, "4.2.2", "full@example.com")
    assert state(session, "full@example.com") == ("active", 1, None)
    # Without its VERP headers it is still tied to the digest by the returned Message-ID.
    no_verp = sample(EXIM_PLAIN, **{"Envelope-to: bounces+102@": "Envelope-to: x@",
                                    "for bounces+102@": "for x@", "To: bounces+102@": "To: x@"})
    assert parse_report(no_verp).verp_ids == []
    assert parse_report(no_verp).message_id_ids == (7, 102)


def test_a_persons_mail_quoting_a_reply_code_changes_nothing(session, sent_run, settings):
    person = (b"From: ann@example.net\nTo: bounces+101@newsroom.example.org\nSubject: re\n\n"
              b"Your server said 550 5.1.1 to me yesterday, gone@example.net works now.\n")
    assert process(session, person, settings=settings).result == "unmatched"
    assert bounce_count(session) == 0
    assert state(session, "gone@example.net") == ("active", 0, None)


def test_a_notice_quoting_no_reply_is_found_by_flufl_bounce_and_is_soft_never_hard(
        session, sent_run, settings):
    no_code = sample(QMAIL_PLAIN, **{"Remote host said: 550 5.1.1": "Remote host said:"})
    outcome = process(session, no_code, settings=settings)
    assert (outcome.result, outcome.kind, outcome.email) == ("recorded", Fault.soft, "gone@example.net")
    assert state(session, "gone@example.net") == ("active", 1, None)


def test_processing_the_same_reports_twice_records_and_changes_nothing_new(session, sent_run, settings):
    samples = [HARD_5_1_1.read_bytes(), full_failed(), POLICY_5_7_1.read_bytes(),
               BY_MESSAGE_ID.read_bytes()]
    first = [process(session, raw, settings=settings) for raw in samples]
    assert [o.result for o in first] == ["recorded"] * 4
    before = ({a: state(session, a) for a in ADDRESSES.values()}, bounce_count(session))
    # Line ends and header order around the report differ, as after another mail path.
    again = [process(session, raw.replace(b"\n", b"\r\n"), settings=settings) for raw in samples]
    assert [o.result for o in again] == ["duplicate"] * 4
    assert [o.delivery_id for o in again] == [101, 102, 103, 104]
    assert ({a: state(session, a) for a in ADDRESSES.values()}, bounce_count(session)) == before


# --- classification and parsing ------------------------------------------------------------


def test_a_status_5_1_1_whose_reply_is_a_block_list_refusal_pauses_and_never_suppresses(
        session, sent_run, settings):
    raw = sample(HARD_5_1_1, **{
        "Diagnostic-Code: smtp; 550 5.1.1": "Diagnostic-Code: smtp; 550 5.7.1 blacklisted:"})
    outcome = process(session, raw, settings=settings)
    assert (outcome.kind, outcome.status_code, outcome.suppressed) == (Fault.policy, "5.7.1", False)
    assert state(session, "gone@example.net") == ("active", 0, None)
    assert session.get(Delivery, 101).status == "sent"
    assert session.scalars(select(DomainPause.domain)).all() == ["example.net"]


def test_a_report_about_our_sender_is_recorded_and_changes_nothing_for_the_reader(
        session, sent_run, settings):
    raw = sample(HARD_5_1_1, **{
        "Status: 5.1.1": "Status: 5.1.8",
        "Diagnostic-Code: smtp; 550 5.1.1": "Diagnostic-Code: smtp; 553 5.1.8 Sender address "
                                            "rejected: Domain not found;"})
    outcome = process(session, raw, settings=settings)
    assert (outcome.kind, outcome.status_code, outcome.suppressed) == (Fault.sender, "5.1.8", False)
    assert "check the sending set-up" in outcome.reason
    assert state(session, "gone@example.net") == ("active", 0, None)
    assert session.get(Delivery, 101).status == "sent"
    assert session.scalar(select(func.count()).select_from(DomainPause)) == 0
    assert session.scalars(select(Bounce.kind)).all() == [Fault.sender]


def test_raw_8bit_bytes_in_the_returned_headers_still_match_the_message_id(session, sent_run, settings):
    raw = BY_MESSAGE_ID.read_bytes().replace(
        b"Message-ID: <digest.7.104@newsroom.example.org>",
        b"Message-ID: <digest.7.104@newsroom.example.org> (caf\xe9)")
    outcome = process(session, raw, settings=settings)
    assert (outcome.matched_by, outcome.delivery_id) == ("message-id", 104)


def _encode_status_part(path: Path, encoding: str) -> bytes:
    """The sample with its message/delivery-status part sent base64 or quoted-printable,
    as Exchange and some gateways send it."""
    import base64
    import quopri

    text = path.read_text()
    head, sep, rest = text.partition("Content-Type: message/delivery-status\n\n")
    assert sep
    body, boundary, tail = rest.partition("\n--")
    raw = body.encode()
    encoded = (base64.encodebytes(raw) if encoding == "base64"
               else quopri.encodestring(raw, quotetabs=True)).decode()
    return (head + f"Content-Type: message/delivery-status\nContent-Transfer-Encoding: {encoding}\n\n"
            + encoded + boundary + tail).encode()


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_an_encoded_delivery_status_part_reads_as_the_plain_report(session, sent_run, encoding, settings):
    plain = parse_report(HARD_5_1_1.read_bytes())
    encoded_raw = _encode_status_part(HARD_5_1_1, encoding)
    assert b"Status: 5.1.1" not in encoded_raw or encoding == "quoted-printable"
    encoded = parse_report(encoded_raw)
    assert encoded.recipients == plain.recipients
    # The same report hashes the same, so a plain copy of it later is a duplicate.
    assert encoded.report_hash == plain.report_hash
    outcome = process(session, encoded_raw, settings=settings)
    assert (outcome.result, outcome.kind, outcome.delivery_id) == ("recorded", Fault.hard, 101)
    assert state(session, "gone@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    assert process(session, HARD_5_1_1.read_bytes(), settings=settings).result == "duplicate"


def test_unreadable_bounce_messages_raise_clear_errors_and_write_nothing(session, sent_run, settings):
    boundary = HARD_5_1_1.read_text().split('boundary="')[1].split('"')[0]
    wrong_boundary = sample(HARD_5_1_1, **{f'boundary="{boundary}"': 'boundary="nothing-like-it"'})
    no_recipient = sample(HARD_5_1_1, **{"Action: failed\n": "", "Status: 5.1.1\n": ""})
    bad_base64 = _encode_status_part(HARD_5_1_1, "base64").replace(b"UmVwb3J0aW5n", b"UmVwb3J0aW5", 1)
    cases = [
        (bad_base64, "not valid base64"),
        (b"", "empty"),
        (b"   \r\n", "empty"),
        (b"X" * (MAX_BOUNCE_BYTES + 1), "more than"),
        (wrong_boundary, "MIME boundary does not match its body"),
        (b"\x00\x01\xff\xfe" * 64, "binary data"),
        (b"just some notes\nnothing more\n", "not an email message"),
        (no_recipient, "no recipient block"),
    ]
    for raw, message in cases:
        with pytest.raises(BounceError, match=message):
            process_bounce_message(session, raw, settings=settings)
        session.rollback()
    assert bounce_count(session) == 0


# --- mailboxes -----------------------------------------------------------------------------


def counts(report) -> tuple[int, ...]:
    return (report.processed, report.hard, report.soft, report.policy, report.unmatched,
            report.duplicates, len(report.errors))


def test_maildir_is_processed_and_a_second_run_changes_nothing(session, settings, sent_run):
    report = process_mailbox(DATA / "maildir", settings=settings)
    # The delay warning (4.2.2, Action: delayed) is no failure: unmatched, like the autoreply.
    assert counts(report) == (5, 2, 0, 1, 2, 0, 0)
    assert sorted(report.suppressed) == ["gone@example.net", "moved@example.net"]
    assert [o.email for o in report.policy_rejections] == ["strict@example.org"]
    assert "2 hard, 0 soft, 1 policy, 0 about our sender, 2 unmatched" in report.summary()
    again = process_mailbox(DATA / "maildir", "maildir", settings=settings)
    assert counts(again) == (5, 0, 0, 0, 2, 3, 0)
    assert bounce_count(session) == 3


def test_mbox_gives_the_same_result_and_the_same_reports_in_a_maildir_are_duplicates(
        session, settings, sent_run):
    report = process_mailbox(DATA / "bounces.mbox", settings=settings)
    assert counts(report) == (5, 2, 0, 1, 2, 0, 0)
    assert state(session, "gone@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    assert state(session, "full@example.com") == ("active", 0, None)
    assert counts(process_mailbox(DATA / "maildir", settings=settings)) == (5, 0, 0, 0, 2, 3, 0)


def test_a_broken_message_in_a_mailbox_is_listed_and_the_others_are_processed(
        session, settings, sent_run, tmp_path):
    boundary = POLICY_5_7_1.read_text().split('boundary="')[1].split('"')[0]
    broken = sample(POLICY_5_7_1, **{f'boundary="{boundary}"': 'boundary="not-in-the-body"'}
                    ).decode()
    good = HARD_5_1_1.read_text()
    box = tmp_path / "mixed.mbox"
    box.write_text(f"From MAILER-DAEMON Tue Oct 14 07:30:15 2025\n{broken}\n"
                   f"From MAILER-DAEMON Tue Oct 14 07:30:16 2025\n{good}\n")
    report = process_mailbox(box, "mbox", settings=settings)
    assert (report.processed, report.hard, len(report.errors)) == (2, 1, 1)
    key, reason = report.errors[0]
    assert key == "mixed.mbox#1" and "MIME boundary does not match its body" in reason
    assert state(session, "strict@example.org") == ("active", 0, None)
    assert bounce_count(session) == 1


def test_paths_that_are_no_mailbox_raise_clear_errors(session, settings, sent_run, tmp_path):
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    cases = [
        ((tmp_path / "missing",), BounceError, "no such file or folder"),
        ((plain_dir,), BounceError, "not a Maildir: it needs 'cur' and 'new'"),
        ((DATA / "maildir", "mbox"), BounceError, "is a folder, not an mbox or message file"),
        ((DATA / "bounces.mbox", "maildir"), BounceError, "not a Maildir"),
        ((DATA / "bounces.mbox", "eml"), ValidationError, "choose one of auto, maildir, mbox, file"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            process_mailbox(*args, settings=settings)
    empty = tmp_path / "empty.mbox"
    empty.write_bytes(b"")
    assert counts(process_mailbox(empty, settings=settings)) == (0, 0, 0, 0, 0, 0, 0)
    assert bounce_count(session) == 0


# --- with the real pipeline and a real SMTP server -----------------------------------------


@pytest.fixture
def two_readers(session):
    t = Taxo(session)
    make_item(session, "Community policing forum", themes=[t.policing])
    make_subscriber(session, "gone@example.net")
    make_subscriber(session, "stays@example.org")
    session.commit()
    return t


def next_run_recipients(session, taxo, smtp_sink, settings) -> tuple[list[str], list[list[str]]]:
    """A week later, with a new item: who is planned and who the server hears from."""
    make_item(session, "Next week's item", themes=[taxo.policing], ingested_at=T0 + timedelta(days=6))
    session.commit()
    smtp_sink.clear()
    planned = plan_scheduled_run(session, "weekly", now=T0 + timedelta(days=7), everyone=True,
                                 settings=settings)
    session.commit()
    send_deliveries(planned.pending_ids, settings=settings)
    planned_to = sorted(session.scalars(select(Delivery.email).where(
        Delivery.run_id == planned.run_id, Delivery.status != "skipped")))
    return planned_to, [m.rcpt_tos for m in smtp_sink.wait_for(1)]


def test_smtp_550_5_1_1_suppresses_and_the_next_run_does_not_send_there(session, smtp_sink, two_readers, settings):
    smtp_sink.script("gone@example.net", "550 5.1.1 <gone@example.net>: Recipient address "
                     "rejected: User unknown in virtual mailbox table")
    planned = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    result = send_deliveries(planned.pending_ids, settings=settings)
    assert (result.sent, result.failed) == (1, 1)
    assert state(session, "gone@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    assert next_run_recipients(session, two_readers, smtp_sink, settings) == (
        ["stays@example.org"], [["stays@example.org"]])


def test_dsn_for_a_sent_digest_suppresses_and_the_next_run_does_not_send_there(
        session, smtp_sink, two_readers, settings):
    planned = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    send_deliveries(planned.pending_ids, settings=settings)
    received = {m.rcpt_tos[0]: m for m in smtp_sink.wait_for(2)}
    sent = received["gone@example.net"]
    delivery = session.scalars(select(Delivery).where(Delivery.email == "gone@example.net")).one()
    assert sent.mail_from == f"bounces+{delivery.id}@newsroom.example.org"  # the VERP return path
    # The receiving server bounces it later, to the return path it was given.
    dsn = sample(HARD_5_1_1, **{"bounces+101@newsroom.example.org": sent.mail_from,
                                "<digest.7.101@newsroom.example.org>": delivery.message_id,
                                "X-Digest-Delivery: 101": f"X-Digest-Delivery: {delivery.id}"})
    outcome = process(session, dsn, settings=settings)
    assert (outcome.delivery_id, outcome.kind, outcome.matched_by) == (delivery.id, Fault.hard, "verp")
    assert state(session, "gone@example.net") == ("suppressed", 0, SuppressionReason.hard_bounce)
    assert session.get(Delivery, delivery.id).status == "failed"
    assert next_run_recipients(session, two_readers, smtp_sink, settings) == (
        ["stays@example.org"], [["stays@example.org"]])
