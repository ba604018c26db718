"""The outcome of a try that may be repeated: our note apart from the server's reply."""

from __future__ import annotations

from datetime import timedelta

from digest.models import DeliveryStatus, utcnow
from digest.records.states import Deferred, FailedForGood, retry_or_give_up, values_of
from digest.settings import Settings

REFUSAL = "SMTP server mx:25 refused ann@example.org at RCPT TO: 451 4.7.1 try later"


def test_a_deferred_try_keeps_our_words_in_the_note_and_the_servers_in_the_reply():
    later = utcnow() + timedelta(minutes=5)
    outcome = retry_or_give_up(1, Settings(max_attempts=3), REFUSAL, later,
                               smtp_code=451, smtp_reply="451 4.7.1 try later",
                               message_id="<m@example.org>")
    assert outcome == Deferred(REFUSAL, later, 451, "451 4.7.1 try later", "<m@example.org>")
    assert values_of(outcome) == {"status": DeliveryStatus.deferred, "note": REFUSAL,
                                  "next_attempt_at": later, "smtp_code": 451,
                                  "smtp_reply": "451 4.7.1 try later",
                                  "message_id": "<m@example.org>"}


def test_the_last_try_fails_with_a_note_that_says_we_gave_up():
    outcome = retry_or_give_up(3, Settings(max_attempts=3), REFUSAL, utcnow(),
                               smtp_code=451, smtp_reply="451 4.7.1 try later",
                               message_id="<m@example.org>")
    assert isinstance(outcome, FailedForGood) and outcome.status is DeliveryStatus.failed
    assert outcome.note == f"gave up after 3 attempts: {REFUSAL}"
    values = values_of(outcome)
    assert values["smtp_reply"] == "451 4.7.1 try later" and "next_attempt_at" not in values
