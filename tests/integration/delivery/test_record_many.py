"""Outcomes written in groups (states.record_many, states.Recorder) on SQLite and PostgreSQL,
and the duplicate window it opens: a worker killed between two writes, with a real SMTP
server (aiosmtpd) and a real SIGKILL."""

from __future__ import annotations

import email
import multiprocessing
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from email import policy

import pytest
from sqlalchemy import event, select

from digest import db
from digest.delivery import send_deliveries
from digest.delivery.transport import SMTPTransport
from digest.models import Delivery, utcnow
from digest.records import recover_expired_leases, states
from digest.selection import plan_scheduled_run
from tests.factories import T0, Taxo, make_item, make_subscriber

TOKEN = states.new_claim_token()


@pytest.fixture
def planned(session, settings):
    """Five subscribers with one item each; a weekly run planned."""
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for i in range(5):
        make_subscriber(session, f"reader{i}@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    return run


def _statuses(session) -> dict[int, str]:
    session.expire_all()
    return dict(session.execute(select(Delivery.id, Delivery.status).order_by(Delivery.id)).all())


def test_record_many_writes_every_outcome_but_not_over_a_row_the_sweep_took_back(
        session, settings, planned):
    ids = states.claim(session, planned.pending_ids, utcnow(), settings, token=TOKEN)
    session.commit()
    taken_back = ids[0]
    # The lease ran out for one row: the sweep made it deferred (due) before we wrote.
    session.execute(Delivery.__table__.update().where(Delivery.id == taken_back)
                    .values(lease_until=utcnow() - timedelta(seconds=1)))
    assert recover_expired_leases(session) == [taken_back]
    session.commit()

    sent_at = utcnow()
    states.record_many(session, [
        (i, states.Sent(250, "2.0.0 Ok", f"<{i}@example.org>", sent_at)) for i in ids[:-1]
    ] + [(ids[-1], states.Cancelled("cancelled: subscriber is unsubscribed"))],
        token=TOKEN)

    rows = {d.id: d for d in session.scalars(select(Delivery))}
    assert rows[taken_back].status == "deferred" and rows[taken_back].sent_at is None
    assert "lease expired" in rows[taken_back].note
    for i in ids[1:-1]:
        assert rows[i].status == "sent" and rows[i].smtp_code == 250
        assert rows[i].lease_until is None and rows[i].updated_at >= sent_at
    assert rows[ids[-1]].status == "cancelled" and rows[ids[-1]].smtp_code is None


def test_an_outcome_that_gives_the_attempt_back_leaves_attempts_as_before_the_claim(
        session, settings, planned):
    [one] = states.claim(session, planned.pending_ids[:1], utcnow(), settings, token=TOKEN)
    session.commit()
    until = utcnow() + timedelta(hours=1)
    states.record_many(session, [(one, states.DeferredWithoutAttempt(until, "paused"))],
                       token=TOKEN)
    row = session.get(Delivery, one)
    session.refresh(row)
    assert (row.status, row.attempts, row.note) == ("deferred", 0, "paused")


def test_the_recorder_writes_when_the_group_is_full_or_old_enough_and_not_before(
        session, settings, planned):
    settings.record_every, settings.record_ms = 3, 200
    ids = states.claim(session, planned.pending_ids, utcnow(), settings, token=TOKEN)
    session.commit()
    recorder = states.Recorder(session, settings, TOKEN)
    sent = states.Sent(250, "2.0.0 Ok", "<m@example.org>", utcnow())
    recorder.add(ids[0], sent)
    recorder.add(ids[1], sent)
    assert set(_statuses(session).values()) == {"sending"}  # two waiting: below K, young
    recorder.add(ids[2], sent)  # the third fills the group
    assert [_statuses(session)[i] for i in ids] == ["sent"] * 3 + ["sending"] * 2
    recorder.add(ids[3], sent)
    recorder.flush_if_due()
    assert _statuses(session)[ids[3]] == "sending"
    time.sleep(0.25)
    recorder.flush_if_due()  # older than DIGEST_RECORD_MS: written although the group is short
    assert _statuses(session)[ids[3]] == "sent"
    assert recorder.waiting == []


def test_a_batch_records_its_outcomes_with_one_statement_and_one_commit(
        session, smtp_sink, settings, planned, monkeypatch):
    # One leavers' read however slow the machine (a second one a second would add a commit).
    from digest.delivery import send as send_module

    monkeypatch.setattr(send_module._Leavers, "RECHECK_SECONDS", 3600.0)
    commits, updates = [], []
    engine = db.engine_for(settings.database_url)

    def on_commit(conn):
        commits.append(1)

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        # (The claim's settling of journalled acceptances reads ``acceptances``: not an
        # outcome write.)
        if statement.startswith("UPDATE deliveries SET") and "sent_at" in statement \
                and "acceptances" not in statement:
            updates.append(len(parameters) if executemany else 1)

    event.listen(engine, "commit", on_commit)
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        result = send_deliveries(planned.pending_ids, settings=settings)
    finally:
        event.remove(engine, "commit", on_commit)
        event.remove(engine, "before_cursor_execute", on_execute)
    assert result.sent == 5
    assert set(_statuses(session).values()) == {"sent"}
    assert updates == [5]  # one executemany for the five outcomes
    # The claim, the leavers' read, the outcomes, the run's end: not one commit a message.
    assert len(commits) == 4


class _KilledAfter:
    """Sends through a real SMTP transport; SIGKILLs its own process right after the n-th
    message was accepted (before the worker could record it)."""

    def __init__(self, inner: SMTPTransport, n: int):
        self.inner, self.n, self.count = inner, n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.inner.close()

    def send(self, mail_from, rcpt, data):
        reply = self.inner.send(mail_from, rcpt, data)
        self.count += 1
        if self.count == self.n:
            os.kill(os.getpid(), signal.SIGKILL)
        return reply


def _send_then_die(ids, settings, n):
    db.engine_for(settings.database_url).dispose(close=False)  # the parent's connections
    send_deliveries(ids, transport=_KilledAfter(SMTPTransport(settings), n), settings=settings)


def test_a_worker_killed_between_two_writes_leaves_the_unwritten_rows_sending_and_lease_recovery_resends_only_those(  # noqa: E501
        session, smtp_sink, settings, planned):
    settings.record_every, settings.record_ms = 2, 60_000
    ids = sorted(planned.pending_ids)
    worker = multiprocessing.get_context("fork").Process(
        target=_send_then_die, args=(ids, settings, 3))
    worker.start()
    worker.join(30)
    assert worker.exitcode == -signal.SIGKILL

    # Two outcomes were written (a full group); the third was accepted by the server but
    # its outcome died with the worker; the last two were never sent.
    statuses = _statuses(session)
    assert [statuses[i] for i in ids] == ["sent", "sent", "sending", "sending", "sending"]
    assert len(smtp_sink.wait_for(3)) == 3

    later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
    assert recover_expired_leases(session, later) == ids[2:]
    session.commit()
    again = send_deliveries(ids, now=later, settings=settings)
    assert (again.claimed, again.sent) == (3, 3)
    assert set(_statuses(session).values()) == {"sent"}

    received = smtp_sink.wait_for(6)
    per_id = Counter(email.message_from_bytes(m.data, policy=policy.default)["Message-ID"]
                     for m in received)
    # The duplicate window (ADR 0020): killed between the server's 250 and the acceptance
    # journal's write, the message in flight is sent again with the same Message-ID
    # (receivers de-duplicate on it); those journalled before are not (see
    # test_claims_and_journal.py).
    assert sorted(per_id.values()) == [1, 1, 1, 1, 2]
    row = session.get(Delivery, ids[2])
    assert per_id[row.message_id] == 2


def test_outcomes_waiting_when_the_database_drops_are_written_once_it_is_back_not_resent(
        session, smtp_sink, settings, planned):
    """A database restart mid-batch: the writes of the outcomes fail as a lost connection
    does, three times (about a second of restart); the batch retries within half its lease
    instead of leaving accepted messages in ``sending`` for lease recovery to send again."""
    from sqlalchemy.exc import OperationalError

    engine = db.engine_for(settings.database_url)
    failures = []

    def drop_first_outcome_write(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE deliveries SET") and "sent_at" in statement \
                and "acceptances" not in statement and len(failures) < 3:
            failures.append(1)
            raise OperationalError(statement, parameters, Exception("server closed the "
                                                                    "connection unexpectedly"))

    event.listen(engine, "before_cursor_execute", drop_first_outcome_write)
    try:
        with pytest.raises(OperationalError):
            send_deliveries(planned.pending_ids, settings=settings)
    finally:
        event.remove(engine, "before_cursor_execute", drop_first_outcome_write)
    assert failures == [1, 1, 1]
    assert set(_statuses(session).values()) == {"sent"}  # none left for recovery to resend
    assert len(smtp_sink.messages) == 5
