"""Amazon SES bounce notifications (the JSON SES posts to SNS, delivered by email)."""

import json

import pytest

from digest.bounces import parse_report
from digest.models import Fault


def ses_mail(bounce_type: str, subtype: str, status: str | None = None,
             diagnostic: str | None = None) -> bytes:
    entry = {"emailAddress": "Reader@Example.net", "action": "failed"}
    if status:
        entry["status"] = status
    if diagnostic:
        entry["diagnosticCode"] = diagnostic
    note = {"notificationType": "Bounce",
            "bounce": {"bounceType": bounce_type, "bounceSubType": subtype,
                       "bouncedRecipients": [entry]},
            "mail": {"source": "bounces+101@newsroom.example.org",
                     "headers": [{"name": "Message-ID",
                                  "value": "<digest.7.101@newsroom.example.org>"}]}}
    envelope = {"Type": "Notification", "Message": json.dumps(note)}
    return ("From: no-reply@sns.amazonaws.com\nTo: ops@newsroom.example.org\n"
            "Subject: AWS Notification Message\n\n" + json.dumps(envelope)).encode()


@pytest.mark.parametrize(("args", "kind"), [
    (("Permanent", "General"), Fault.hard),
    (("Permanent", "NoEmail"), Fault.hard),
    (("Permanent", "Suppressed"), Fault.sender),
    (("Transient", "MailboxFull"), Fault.soft),
    (("Transient", "ContentRejected"), Fault.policy),
    (("Transient", "General"), Fault.soft),
    # The receiver's own reply, wrapped by SES, wins over SES's "Permanent/General".
    (("Permanent", "General", "5.7.1", "smtp; 550 5.7.1 Service unavailable, blocked using "
      "Spamhaus"), Fault.policy),
    (("Transient", "General", "5.1.1", "smtp; 550 5.1.1 user unknown"), Fault.soft),
])
def test_an_ses_notification_is_classified_and_tied_to_its_delivery(args, kind):
    report = parse_report(ses_mail(*args))
    assert report.source == "amazon-ses"
    (recipient,) = report.recipients
    assert recipient.final_recipient == "reader@example.net" and recipient.kind is kind
    assert report.verp_ids == [101] and report.message_id_ids == (7, 101)


def test_an_ses_complaint_is_no_bounce():
    raw = ses_mail("Permanent", "General").replace(b"Bounce", b"Complaint")
    assert parse_report(raw) is None
