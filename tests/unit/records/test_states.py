"""The outcome of a try that may be repeated: our note apart from the server's reply."""

from __future__ import annotations

from datetime import timedelta

from digest.models import DeliveryStatus, utcnow
from digest.records.states import retry_or_give_up
from digest.settings import Settings

REFUSAL = "SMTP server mx:25 refused ann@example.org at RCPT TO: 451 4.7.1 try later"


def test_a_deferred_try_keeps_our_words_in_the_note_and_the_servers_in_the_reply():
    later = utcnow() + timedelta(minutes=5)
    outcome = retry_or_give_up(1, Settings(max_attempts=3), REFUSAL, later,
                               smtp_code=451, smtp_reply="451 4.7.1 try later")
    assert outcome == {"status": DeliveryStatus.deferred, "note": REFUSAL,
                       "next_attempt_at": later, "smtp_code": 451,
                       "smtp_reply": "451 4.7.1 try later"}


def test_the_last_try_fails_with_a_note_that_says_we_gave_up():
    outcome = retry_or_give_up(3, Settings(max_attempts=3), REFUSAL, utcnow(),
                               smtp_code=451, smtp_reply="451 4.7.1 try later")
    assert outcome["status"] is DeliveryStatus.failed
    assert outcome["note"] == f"gave up after 3 attempts: {REFUSAL}"
    assert outcome["smtp_reply"] == "451 4.7.1 try later" and "next_attempt_at" not in outcome
