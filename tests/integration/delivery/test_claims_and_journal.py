"""Issue 15, the delivery core, on SQLite and PostgreSQL with a real SMTP server (aiosmtpd):
claims carry a holder token every later write checks; leases and due times are the
database's clock; each acceptance is journalled at the server's 250, so a killed worker or a
database that refuses the outcome write resends at most the message in flight (ADR 0020)."""

from __future__ import annotations

import email
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from email import policy

import pytest
import time_machine
from sqlalchemy import event, select, update

from digest import db
from digest.delivery import send as send_module
from digest.delivery import send_deliveries
from digest.delivery.transport import SMTPTransport
from digest.models import Acceptance, Delivery, DeliveryStatus, utcnow
from digest.records import recover_expired_leases, states
from digest.selection import plan_scheduled_run
from tests.factories import T0, Taxo, make_item, make_subscriber


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


def _rows(session) -> dict[int, Delivery]:
    session.expire_all()
    return {d.id: d for d in session.scalars(select(Delivery).order_by(Delivery.id))}


def _per_message_id(sink, count: int) -> Counter[str]:
    return Counter(email.message_from_bytes(m.data, policy=policy.default)["Message-ID"]
                   for m in sink.wait_for(count))


def _sent(delivery_id: int) -> states.Sent:
    return states.Sent(250, "2.0.0 Ok", f"<{delivery_id}@example.org>", utcnow())


def _expire_leases(session) -> None:
    session.execute(update(Delivery).where(Delivery.status == DeliveryStatus.sending)
                    .values(lease_until=utcnow() - timedelta(minutes=10)))
    session.commit()


# --- claims carry a holder token ----------------------------------------------------------

def test_a_worker_whose_claim_was_taken_over_overwrites_nothing_of_the_new_claim(
        session, settings, planned):
    ids = planned.pending_ids
    frozen, other = states.new_claim_token(), states.new_claim_token()
    assert states.claim(session, ids, None, settings, token=frozen) == ids
    session.commit()
    # The frozen worker's lease ran out; the sweep took the rows back; another worker claimed.
    _expire_leases(session)
    assert recover_expired_leases(session) == ids
    session.commit()
    assert states.claim(session, ids, None, settings, token=other) == ids
    session.commit()

    # The frozen worker resumes and writes every kind of outcome it knows: none lands.
    states.record_many(session, [(ids[0], _sent(ids[0]))], token=frozen)
    states.cancel_claimed(session, ids[1], "cancelled: subscriber is unsubscribed",
                          token=frozen)
    states.defer_without_attempt(session, ids[2], utcnow() + timedelta(hours=1), "paused",
                                 token=frozen)
    assert states.put_back(session, ids[3:], "not sent, put back: x", settings,
                           token=frozen) == 0
    rows = _rows(session)
    assert {(r.status, r.claim_token) for r in rows.values()} == {("sending", other)}
    assert all("cancelled" not in (r.note or "") for r in rows.values())

    # The holder's own writes do land.
    states.record_many(session, [(i, _sent(i)) for i in ids], token=other)
    assert {r.status for r in _rows(session).values()} == {"sent"}


class _FreezeFirst:
    """A real SMTP transport whose first send waits (a worker stopped by SIGSTOP between
    its check and its send) until the test resumes it."""

    def __init__(self, settings):
        self.inner = SMTPTransport(settings)
        self.frozen, self.resume = threading.Event(), threading.Event()
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.inner.close()

    def send(self, mail_from, rcpt, data):
        self.count += 1
        if self.count == 1:
            self.frozen.set()
            assert self.resume.wait(30)
        return self.inner.send(mail_from, rcpt, data)


def test_a_frozen_worker_that_resumes_after_its_claim_was_taken_over_sends_only_the_message_in_flight(  # noqa: E501
        session, smtp_sink, settings, planned, monkeypatch):
    monkeypatch.setattr(send_module._Leavers, "RECHECK_SECONDS", 0.0)
    ids = planned.pending_ids
    frozen = _FreezeFirst(settings)
    results = []
    worker = threading.Thread(target=lambda: results.append(
        send_deliveries(ids, transport=frozen, settings=settings)))
    worker.start()
    assert frozen.frozen.wait(30)

    # Meanwhile its lease runs out and another worker sends the whole batch.
    later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
    assert recover_expired_leases(session, later) == ids
    session.commit()
    assert send_deliveries(ids, now=later, settings=settings).sent == 5

    frozen.resume.set()
    worker.join(30)
    [result] = results
    # The message it was about to send goes (the one in flight); the rest it no longer holds.
    assert (result.sent, result.lost) == (1, 4)
    assert sorted(_per_message_id(smtp_sink, 6).values()) == [1, 1, 1, 1, 2]
    rows = _rows(session)
    assert {r.status for r in rows.values()} == {"sent"}
    # Its outcome did not overwrite the other worker's record of the same row.
    assert rows[ids[0]].note is None and rows[ids[0]].sent_at is not None


# --- leases and due times are the database's clock ---------------------------------------

def test_a_worker_whose_clock_runs_five_minutes_ahead_takes_over_no_live_lease(
        session, smtp_sink, settings, planned):
    settings.lease_seconds = 45
    ids = planned.pending_ids
    holder = states.new_claim_token()
    assert states.claim(session, ids, None, settings, token=holder) == ids
    session.commit()
    with time_machine.travel(utcnow() + timedelta(minutes=5), tick=True):
        assert recover_expired_leases(session) == []
        assert states.sweep(session, settings).recovered == []
        session.commit()
        assert send_deliveries(ids, settings=settings).claimed == 0
    assert {r.claim_token for r in _rows(session).values()} == {holder}
    assert smtp_sink.messages == []


def test_a_worker_whose_clock_runs_behind_claims_a_lease_that_lasts_by_the_database_s_clock(
        session, settings, planned):
    settings.lease_seconds = 45
    ids = planned.pending_ids
    with time_machine.travel(utcnow() - timedelta(minutes=5), tick=True):
        assert states.claim(session, ids, None, settings,
                            token=states.new_claim_token()) == ids
        session.commit()
    # By the database's clock the lease has 45 s to go: nobody takes it over yet.
    assert recover_expired_leases(session) == []
    for row in _rows(session).values():
        assert utcnow() < row.lease_until <= utcnow() + timedelta(seconds=46)


def test_a_deferred_row_is_not_due_early_for_a_worker_whose_clock_runs_ahead(
        session, settings, planned):
    ids = planned.pending_ids
    session.execute(update(Delivery).where(Delivery.id.in_(ids))
                    .values(status=DeliveryStatus.deferred,
                            next_attempt_at=utcnow() + timedelta(minutes=2)))
    session.commit()
    with time_machine.travel(utcnow() + timedelta(minutes=5), tick=True):
        assert states.due_for_retry(session) == []
        assert states.claim(session, ids, None, settings,
                            token=states.new_claim_token()) == []
    assert states.due_for_retry(session, now=utcnow() + timedelta(minutes=3)) == ids


# --- the acceptance journal -----------------------------------------------------------------

class _KilledBefore:
    """A real SMTP transport; SIGKILLs its own process as the n-th send begins: the messages
    before it were accepted and journalled, but their group of outcomes not written."""

    def __init__(self, inner: SMTPTransport, n: int):
        self.inner, self.n, self.count = inner, n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.inner.close()

    def send(self, mail_from, rcpt, data):
        self.count += 1
        if self.count == self.n:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.send(mail_from, rcpt, data)


def _send_then_die(ids, settings, n):
    db.engine_for(settings.database_url).dispose(close=False)  # the parent's connections
    send_deliveries(ids, transport=_KilledBefore(SMTPTransport(settings), n), settings=settings)


def test_a_worker_killed_before_its_group_of_outcomes_was_written_resends_nothing_the_server_accepted(  # noqa: E501
        session, smtp_sink, settings, planned):
    settings.record_every, settings.record_ms = 50, 60_000
    ids = sorted(planned.pending_ids)
    worker = multiprocessing.get_context("fork").Process(
        target=_send_then_die, args=(ids, settings, 4))
    worker.start()
    worker.join(30)
    assert worker.exitcode == -signal.SIGKILL
    # Three accepted, none of their outcomes written (the group of 50 was not full).
    assert {r.status for r in _rows(session).values()} == {"sending"}
    assert len(smtp_sink.wait_for(3)) == 3
    assert len(session.scalars(select(Acceptance)).all()) == 3

    later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
    assert recover_expired_leases(session, later) == ids[3:]  # only the unsent go back
    session.commit()
    rows = _rows(session)
    for i in ids[:3]:
        assert rows[i].status == "sent" and rows[i].sent_at is not None
        assert rows[i].smtp_code == 250 and "acceptance journal" in rows[i].note
    again = send_deliveries(ids, now=later, settings=settings)
    assert (again.claimed, again.sent) == (2, 2)
    assert sorted(_per_message_id(smtp_sink, 5).values()) == [1] * 5  # no duplicate


class _RefuseWrites:
    """The database refuses writes for real while ``on``: PostgreSQL's read-only transaction
    (25006), SQLite's query_only, on the outcome writes and the journal alike."""

    def __init__(self, settings):
        self.engine = db.engine_for(settings.database_url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self.on = False
        self.refused = 0
        self.limit: int | None = None  # refuse this many writes, then let them through

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *exc_info):
        event.remove(self.engine, "before_cursor_execute", self._before)
        self.engine.dispose()  # pooled connections may keep the read-only setting

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if not statement.startswith(("UPDATE deliveries", "INSERT INTO acceptances")):
            return
        refuse = self.on and (self.limit is None or self.refused < self.limit)
        if refuse:
            self.refused += 1
        if self.sqlite:
            cursor.execute(f"PRAGMA query_only = {'ON' if refuse else 'OFF'}")
        elif refuse:
            # The journal's connection is in autocommit: a read-only transaction of its own
            # (rolled back when the journal drops the connection).
            autocommit = cursor.connection.autocommit
            cursor.execute("BEGIN READ ONLY" if autocommit else "SET TRANSACTION READ ONLY")


class _RefusingAfter:
    """A real SMTP transport that turns the database's refusal on once the n-th message is
    accepted (before its acceptance is journalled)."""

    def __init__(self, settings, refuse: _RefuseWrites, n: int):
        self.inner, self.refuse, self.n, self.count = SMTPTransport(settings), refuse, n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.inner.close()

    def send(self, mail_from, rcpt, data):
        reply = self.inner.send(mail_from, rcpt, data)
        self.count += 1
        if self.count == self.n:
            self.refuse.on = True
        return reply


def test_a_database_that_refuses_the_outcome_write_for_a_while_is_retried_and_nothing_is_resent(
        session, smtp_sink, settings, planned):
    settings.record_every, settings.record_ms = 50, 5_000
    settings.lease_seconds = 10
    ids = sorted(planned.pending_ids)
    with _RefuseWrites(settings) as refuse:
        refuse.limit = 4  # the journal's write, then the group's three times
        with pytest.raises(Exception, match="read-only|readonly"):
            send_deliveries(ids, transport=_RefusingAfter(settings, refuse, 3),
                            settings=settings)
        assert refuse.refused == 4
    rows = _rows(session)
    # The three accepted are sent (written once the database took writes again); the two
    # never tried went back, due later.
    assert [rows[i].status for i in ids] == ["sent"] * 3 + ["deferred"] * 2
    later = utcnow() + timedelta(hours=1)
    assert send_deliveries(ids, now=later, settings=settings).sent == 2
    assert sorted(_per_message_id(smtp_sink, 5).values()) == [1] * 5


def test_a_database_that_refuses_writes_for_the_whole_lease_costs_at_most_the_message_in_flight(
        session, smtp_sink, settings, planned):
    settings.record_every, settings.record_ms = 50, 1_000
    settings.lease_seconds = 2  # the batch retries its write for most of it, then gives up
    ids = sorted(planned.pending_ids)
    with _RefuseWrites(settings) as refuse:
        with pytest.raises(Exception, match="read-only|readonly"):
            send_deliveries(ids, transport=_RefusingAfter(settings, refuse, 3),
                            settings=settings)
        assert refuse.refused > 2
    # Nothing could be written: every row is still claimed. Two acceptances are journalled;
    # the third came as the database stopped taking writes.
    assert {r.status for r in _rows(session).values()} == {"sending"}
    assert len(session.scalars(select(Acceptance)).all()) == 2

    later = utcnow() + timedelta(minutes=5)
    assert recover_expired_leases(session, later) == ids[2:]
    session.commit()
    assert send_deliveries(ids, now=later, settings=settings).sent == 3
    assert {r.status for r in _rows(session).values()} == {"sent"}
    # One duplicate for the fault, not the whole group: the message in flight.
    assert sorted(_per_message_id(smtp_sink, 6).values()) == [1, 1, 1, 1, 2]


def test_an_operator_requeue_is_not_mistaken_for_an_earlier_acceptance(
        session, smtp_sink, settings, planned):
    ids = sorted(planned.pending_ids)
    assert send_deliveries(ids[:1], settings=settings).sent == 1
    # It bounced later; the operator gives it a second chance: it goes out again.
    assert states.mark_bounced(session, ids[0], "550 5.2.2 mailbox full")
    assert states.requeue_failed(session, ids[:1]) == 1
    session.commit()
    assert send_deliveries(ids[:1], settings=settings).sent == 1
    assert len(smtp_sink.wait_for(2)) == 2


def _send_in_child(ids, settings):
    db.engine_for(settings.database_url).dispose(close=False)  # the parent's connections
    send_deliveries(ids, settings=settings)


def test_a_worker_process_stopped_with_sigstop_and_continued_sends_only_the_message_in_flight(
        session, smtp_sink, settings, planned, monkeypatch):
    monkeypatch.setattr(send_module._Leavers, "RECHECK_SECONDS", 0.0)  # inherited by the fork
    ids = sorted(planned.pending_ids)
    # The server holds the worker's first message at RCPT TO long enough to stop it there.
    smtp_sink.script("reader0@example.org", "pause:5")
    worker = multiprocessing.get_context("fork").Process(target=_send_in_child,
                                                         args=(ids, settings))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        # Stopped once the server holds its first message at RCPT TO (the paused reply taken).
        while smtp_sink._scripts["reader0@example.org"]:
            assert time.monotonic() < deadline, "the worker never reached its first message"
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGSTOP)
        # Stopped past its lease: the sweep takes the rows back and another worker sends them.
        later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
        assert recover_expired_leases(session, later) == ids
        session.commit()
        assert send_deliveries(ids, now=later, settings=settings).sent == 5
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker.join(30)
    assert worker.exitcode == 0
    # The message it was in the middle of went (the one in flight); nothing else twice.
    per_rcpt = Counter(r for m in smtp_sink.wait_for(6) for r in m.rcpt_tos)
    assert per_rcpt == {"reader0@example.org": 2, **{f"reader{i}@example.org": 1
                                                     for i in range(1, 5)}}
    assert {r.status for r in _rows(session).values()} == {"sent"}
