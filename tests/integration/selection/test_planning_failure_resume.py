"""A run whose planning fails resumes by itself (issue 15, defect 3): a ``--now`` run left
``planning`` with no rows (its first chunk refused, as by a full disk) is finished by the next
tick, and each reader gets one message; ``digest send`` says so in one line.

The failure is injected at one point (the first INSERT of deliveries raises the
OperationalError PostgreSQL gives on a full disk); the rest is real: the database (SQLite and
PostgreSQL), the tick's planning and the in-process sending to a real SMTP server."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from digest import db
from digest.delivery.periodic import send_due_slots, sweep_lost_work
from digest.models import Delivery, DigestRun, RunStatus
from digest.selection import plan_scheduled_run
from tests.factories import T0, make_item, make_subscriber

READERS = [f"reader{n}@example.org" for n in range(5)]


class DiskFull(Exception):
    def __str__(self) -> str:
        return 'could not extend file "base/16384/2619": No space left on device'


@pytest.fixture
def full_disk_once(settings):
    """The next INSERT INTO deliveries fails as on a full disk; later ones go through."""
    engine = db.engine_for(settings.database_url)
    armed = [True]

    def refuse(conn, cursor, statement, parameters, context, executemany):
        if armed[0] and "INSERT INTO DELIVERIES" in statement.upper():
            armed[0] = False
            raise OperationalError(statement, parameters, DiskFull())

    event.listen(engine, "before_cursor_execute", refuse)
    yield armed
    event.remove(engine, "before_cursor_execute", refuse)


def _readers(session, taxo) -> None:
    make_item(session, "Police reform", themes=[taxo.policing],
              ingested_at=T0 - timedelta(hours=2))
    for address in READERS:
        make_subscriber(session, address)
    session.commit()


def test_a_now_run_whose_planning_failed_is_finished_by_the_next_tick_one_message_each(
        db_url, session, taxo, settings, smtp_sink, full_disk_once):
    _readers(session, taxo)
    with pytest.raises(OperationalError):
        plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings,
                           on_chunk=lambda ids: None)
    session.rollback()
    left = session.scalars(select(DigestRun)).one()
    assert left.status == RunStatus.planning and left.planned_count == 0
    assert not full_disk_once[0]

    send_due_slots(settings, now=T0 + timedelta(minutes=5))  # the beat's tick, in-process
    session.expire_all()
    assert session.get(DigestRun, left.id).status in (RunStatus.sending, RunStatus.done)
    rows = session.scalars(select(Delivery).where(Delivery.run_id == left.id)).all()
    assert sorted(row.email for row in rows) == READERS
    assert Counter(m.rcpt_tos[0] for m in smtp_sink.messages) == Counter(
        {address: 1 for address in READERS})

    # A second tick finds nothing left to plan and sends nobody twice.
    send_due_slots(settings, now=T0 + timedelta(minutes=10))
    assert len(smtp_sink.messages) == len(READERS)


def test_the_sweep_finishes_a_run_left_planning_for_a_sweep_not_one_still_young(
        db_url, session, taxo, settings, smtp_sink, full_disk_once, time_machine):
    _readers(session, taxo)
    time_machine.move_to(T0, tick=False)
    with pytest.raises(OperationalError):
        plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings,
                           on_chunk=lambda ids: None)
    session.rollback()
    left = session.scalars(select(DigestRun)).one()

    time_machine.move_to(T0 + timedelta(seconds=10), tick=False)
    sweep_lost_work(settings)  # a planner may still be at work: left alone
    session.expire_all()
    assert session.get(DigestRun, left.id).status == RunStatus.planning
    assert smtp_sink.messages == []

    time_machine.move_to(T0 + timedelta(seconds=settings.sweep_seconds + 15), tick=False)
    sweep_lost_work(settings)  # the beat's sweep, in-process: every few seconds, not hourly
    session.expire_all()
    assert session.get(DigestRun, left.id).status in (RunStatus.sending, RunStatus.done)
    assert Counter(m.rcpt_tos[0] for m in smtp_sink.messages) == Counter(
        {address: 1 for address in READERS})
    sweep_lost_work(settings)
    assert len(smtp_sink.messages) == len(READERS)


def test_digest_send_whose_planning_fails_says_in_one_line_what_happens_next(
        db_url, session, taxo, settings, smtp_sink, full_disk_once, monkeypatch, capsys):
    from digest import cli

    _readers(session, taxo)
    monkeypatch.setattr(sys, "argv", ["digest", "send", "weekly", "--now"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    out, errors = capsys.readouterr()
    assert "Traceback" not in out + errors
    run = session.scalars(select(DigestRun)).one()
    assert errors.strip().splitlines() == [
        f"error: planning stopped (could not extend file \"base/16384/2619\": No space left on "
        f"device): run #{run.id} (0 digest(s) planned so far) stays 'planning'; the beat's sweep "
        "plans the rest by itself within two sweeps (DIGEST_SWEEP_SECONDS; or 'digest tick' "
        "now) and sends nobody "
        "twice; what was planned already is being sent"]
