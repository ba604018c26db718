"""Complaints: ARF feedback reports suppress their reader at once, on SQLite and PostgreSQL.

The samples (tests/data/complaints) are about run 7's deliveries 101-103
(tests/bounce_reports.py).
"""

from __future__ import annotations

import json

from sqlalchemy import func, select

from digest.bounces import process_bounce_message, process_mailbox
from digest.models import Complaint, Delivery, DeliveryStatus, Subscriber, Suppression
from tests.bounce_reports import add_sent_delivery, sample, seed_sample_deliveries
from tests.conftest import TEST_DATA

DATA = TEST_DATA / "complaints"
YAHOO, JMRP, AOL = (DATA / "yahoo-cfl-abuse.eml", DATA / "microsoft-jmrp-abuse.eml",
                    DATA / "aol-scomp-abuse.eml")


def process(session, raw: bytes, settings, **kw):
    outcome = process_bounce_message(session, raw, settings=settings, **kw)
    session.commit()
    session.expire_all()
    return outcome


def listed(session, address: str) -> tuple[str, str | None]:
    session.expire_all()
    status = session.scalar(select(Subscriber.status).where(Subscriber.email == address))
    reason = session.scalar(select(Suppression.reason).where(Suppression.email == address))
    return str(status), (str(reason) if reason else None)


def complaints(session) -> list[tuple[int | None, str, str]]:
    return [(c.delivery_id, c.email, c.source) for c in
            session.scalars(select(Complaint).order_by(Complaint.id))]


def test_a_yahoo_complaint_suppresses_its_reader_at_once_and_is_recorded_against_the_delivery(
        session, settings):
    seed_sample_deliveries(session)
    outcome = process(session, YAHOO.read_bytes(), settings)
    assert outcome.result == "recorded" and outcome.complaint and outcome.suppressed
    assert (outcome.delivery_id, outcome.matched_by) == (101, "verp")
    assert listed(session, "gone@example.net") == ("suppressed", "complaint")
    assert complaints(session) == [(101, "gone@example.net", "arf")]
    # The digest was delivered: its row stays sent.
    assert session.get(Delivery, 101).status == DeliveryStatus.sent


def test_microsoft_and_aol_complaints_with_redacted_recipients_suppress_by_their_delivery(
        session, settings):
    seed_sample_deliveries(session)
    jmrp = process(session, JMRP.read_bytes(), settings)
    aol = process(session, AOL.read_bytes(), settings)
    assert (jmrp.delivery_id, jmrp.matched_by) == (102, "message-id")
    assert (aol.delivery_id, aol.matched_by) == (103, "verp")
    assert listed(session, "full@example.com") == ("suppressed", "complaint")
    assert listed(session, "strict@example.org") == ("suppressed", "complaint")
    assert listed(session, "moved@example.net") == ("active", None)


def test_the_rfc_5965_example_about_one_of_our_messages_suppresses_its_reader(session, settings):
    seed_sample_deliveries(session)
    raw = sample(DATA / "rfc5965-example.eml",
                 **{"Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net":
                    "Message-ID: <digest.7.104@newsroom.example.org>"})
    outcome = process(session, raw, settings)
    assert (outcome.delivery_id, outcome.matched_by) == (104, "message-id")
    assert listed(session, "moved@example.net") == ("suppressed", "complaint")


def test_the_rfc_5965_example_as_it_stands_names_no_delivery_and_changes_nothing(
        session, settings):
    seed_sample_deliveries(session)
    outcome = process(session, (DATA / "rfc5965-example.eml").read_bytes(), settings)
    assert outcome.result == "unmatched" and not outcome.suppressed
    assert complaints(session) == []


def test_the_same_complaint_twice_records_one_and_a_dry_run_changes_nothing(session, settings):
    seed_sample_deliveries(session)
    dry = process(session, YAHOO.read_bytes(), settings, dry_run=True)
    assert dry.result == "recorded" and "would suppress gone@example.net" in dry.reason
    assert listed(session, "gone@example.net") == ("active", None) and complaints(session) == []
    process(session, YAHOO.read_bytes(), settings)
    again = process(session, YAHOO.read_bytes(), settings)
    assert again.result == "duplicate"
    assert session.scalar(select(func.count()).select_from(Complaint)) == 1


def test_a_complaint_cancels_the_readers_planned_digest(session, settings):
    subs = seed_sample_deliveries(session)
    run8 = add_sent_delivery(session, 8, 201, subs["gone@example.net"])
    run8.status, run8.sent_at, run8.smtp_code, run8.smtp_reply = "pending", None, None, None
    session.commit()
    process(session, YAHOO.read_bytes(), settings)
    assert session.get(Delivery, 201).status == DeliveryStatus.cancelled


def test_not_spam_and_auth_failure_reports_change_nothing_for_the_reader(session, settings):
    seed_sample_deliveries(session)
    for kind in ("not-spam", "auth-failure"):
        raw = sample(YAHOO, **{"Feedback-Type: abuse": f"Feedback-Type: {kind}"})
        outcome = process(session, raw, settings)
        assert outcome.result == "unmatched" and not outcome.suppressed, kind
    assert listed(session, "gone@example.net") == ("active", None) and complaints(session) == []


def test_a_mailbox_dry_run_lists_each_complaint_with_its_address_class_and_action(
        session, settings, tmp_path):
    seed_sample_deliveries(session)
    box = tmp_path / "fbl.mbox"
    box.write_text("".join(f"From feedback Mon Oct 13 09:14:02 2025\n{p.read_text()}\n"
                           for p in (YAHOO, JMRP)))
    report = process_mailbox(box, settings=settings, dry_run=True)
    lines = report.as_json_lines()
    assert [(line["address"], line["class"]) for line in lines] == [
        ("gone@example.net", "complaint"), ("full@example.com", "complaint")]
    assert "would suppress gone@example.net" in lines[0]["action"]
    json.dumps(lines)  # what --json prints
    assert listed(session, "gone@example.net") == ("active", None)
    done = process_mailbox(box, settings=settings)
    assert done.complaints == 2 and "2 complaint(s)" in done.summary()
    assert sorted(done.suppressed) == ["full@example.com", "gone@example.net"]


def test_erasing_a_reader_deletes_their_complaints_and_keeps_the_suppression(session, settings):
    from digest.subscribers import erase_subscriber, find_subscriber

    seed_sample_deliveries(session)
    process(session, YAHOO.read_bytes(), settings)
    erased = erase_subscriber(session, find_subscriber(session, "gone@example.net"))
    session.commit()
    assert erased.bounces == 1 and erased.suppression_kept
    assert complaints(session) == []


def ses_mail(note: str) -> bytes:
    """An SES notification as SNS mails it (the JSON in SNS's envelope)."""
    envelope = {"Type": "Notification", "Message": note}
    return ("From: no-reply@sns.amazonaws.com\nTo: ops@newsroom.example.org\n"
            "Subject: AWS Notification Message\n\n" + json.dumps(envelope)).encode()


def test_an_ses_complaint_by_mail_suppresses_the_reader_its_message_id_names(session, settings):
    seed_sample_deliveries(session)
    note = (TEST_DATA / "providers" / "ses-complaint.json").read_text()
    outcome = process(session, ses_mail(note), settings)
    assert outcome.complaint and (outcome.delivery_id, outcome.matched_by) == (102, "message-id")
    assert listed(session, "full@example.com") == ("suppressed", "complaint")


def test_an_ses_complaint_by_mail_naming_no_delivery_is_not_tied_by_its_address(
        session, settings):
    seed_sample_deliveries(session)
    note = json.loads((TEST_DATA / "providers" / "ses-complaint.json").read_text())
    note["mail"]["headers"], note["mail"]["commonHeaders"] = [], {}
    outcome = process(session, ses_mail(json.dumps(note)), settings)
    # Anyone can mail us JSON: only a signed webhook's recipient is trusted.
    assert outcome.result == "unmatched"
    assert listed(session, "full@example.com") == ("active", None)
