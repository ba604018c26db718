"""One put-back policy: every failure that is about us puts the batch back as deferred (its
attempt given back) and raises for the operator; none fails a row or suppresses anyone.
And the sweep: pending rows whose task was lost are found again, and only those.

Real parts: SQLite and PostgreSQL, an SMTP server that keeps what it receives.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from digest.delivery import send_deliveries
from digest.errors import SendSetupError
from digest.models import Delivery, DigestRun, Suppression, utcnow
from digest.records import put_back, sweep
from digest.selection import plan_scheduled_run
from digest.settings import PROJECT_ROOT
from tests.factories import T0, Taxo, make_item, make_subscriber


@pytest.fixture
def planned(session, smtp_sink, settings):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for address in ("one@example.org", "two@example.org", "three@example.org"):
        make_subscriber(session, address)
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    return run


def _rows(session) -> list[Delivery]:
    session.expire_all()
    return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def _assert_put_back(session, smtp_sink, words: str) -> None:
    rows = _rows(session)
    assert {d.status for d in rows} == {"deferred"}
    assert {d.attempts for d in rows} == {0}  # the attempt is given back: never runs out
    assert all(words in d.note and "put back" in d.note for d in rows)
    assert {d.smtp_reply for d in rows} == {None}  # no server was asked
    assert all(d.next_attempt_at > utcnow() for d in rows)
    assert session.scalars(select(Suppression)).all() == []
    assert smtp_sink.messages == []


def test_an_unreadable_dkim_key_puts_the_batch_back_and_names_the_setting(
        session, settings, smtp_sink, planned, monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "dkim_selector", "s1")
    monkeypatch.setattr(settings, "dkim_private_key_path", tmp_path / "missing.pem")
    with pytest.raises(SendSetupError, match="3 deliveries put back") as raised:
        send_deliveries(planned.pending_ids, settings=settings)
    assert "DKIM" in str(raised.value)
    _assert_put_back(session, smtp_sink, "DKIM")


def test_a_template_that_fails_to_render_puts_the_batch_back_instead_of_failing_each_row(
        session, settings, smtp_sink, planned, monkeypatch, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", templates)
    (templates / "email" / "digest" / "subject.txt").write_text("{{ no_such_value.title }}")
    monkeypatch.setattr(settings, "templates_dir", templates)
    with pytest.raises(SendSetupError, match="template .digest. needs a value"):
        send_deliveries(planned.pending_ids, settings=settings)
    _assert_put_back(session, smtp_sink, "no_such_value")
    # The operator mends the template: the next retry sends every one of them.
    monkeypatch.setattr(settings, "templates_dir", PROJECT_ROOT / "templates")
    result = send_deliveries(planned.pending_ids, settings=settings,
                             now=utcnow() + timedelta(hours=1))
    assert result.sent == 3 and len(smtp_sink.wait_for(3)) == 3


def test_contradictory_smtp_settings_changed_after_loading_put_the_batch_back(
        session, settings, smtp_sink, planned, monkeypatch):
    monkeypatch.setattr(settings, "smtp_ssl", True)
    monkeypatch.setattr(settings, "smtp_starttls", True)
    with pytest.raises(SendSetupError, match="exclude each other"):
        send_deliveries(planned.pending_ids, settings=settings)
    _assert_put_back(session, smtp_sink, "exclude each other")


def test_put_back_never_fails_a_row_however_often_it_happens(session, settings, planned):
    ids = planned.pending_ids
    for _ in range(settings.max_attempts + 2):
        session.execute(update(Delivery).where(Delivery.id.in_(ids))
                        .values(status="sending", attempts=Delivery.attempts + 1,
                                claim_token="t1"))
        session.commit()
        assert put_back(session, ids, "not sent, put back: our server is down", settings,
                        token="t1") == 3
    assert {(d.status, d.attempts) for d in _rows(session)} == {("deferred", 0)}


def test_the_sweep_finds_pending_rows_whose_task_was_lost_and_only_those(session, settings,
                                                                         planned):
    ids = planned.pending_ids
    now = utcnow()
    # Just planned: their tasks may still be on their way, so the sweep leaves them alone.
    assert sweep(session, settings, now=now).orphaned == []
    later = now + timedelta(seconds=settings.orphan_after_seconds + 1)
    assert sweep(session, settings, now=later).orphaned == ids
    session.commit()
    # Stamped when found: the next sweep does not enqueue them a second time at once.
    assert sweep(session, settings, now=later + timedelta(seconds=1)).orphaned == []
    # A held run's rows wait for the operator; the sweep never sends them.
    session.execute(update(DigestRun).where(DigestRun.id == planned.run_id).values(status="held"))
    session.commit()
    much_later = later + timedelta(hours=1)
    assert sweep(session, settings, now=much_later).orphaned == []
    session.execute(update(DigestRun).where(DigestRun.id == planned.run_id)
                    .values(status="sending"))
    session.commit()
    assert sweep(session, settings, now=much_later).orphaned == ids


def test_the_sweep_closes_a_run_whose_rows_are_all_final(session, settings, planned):
    session.execute(update(Delivery).values(status="sent"))
    session.commit()
    assert sweep(session, settings).runs_finished == [planned.run_id]
    session.commit()
    assert session.get(DigestRun, planned.run_id).status == "done"


def test_a_reader_who_unsubscribes_while_their_batch_is_sending_is_not_mailed(
        session, settings, planned, monkeypatch):
    from digest import db as digest_db
    from digest.delivery import send as sending
    from digest.devtools import InMemoryTransport
    from digest.models import Subscriber
    from digest.subscribers import unsubscribe

    monkeypatch.setattr(sending._Leavers, "RECHECK_SECONDS", 0.0)

    class LeavesDuringTheBatch(InMemoryTransport):
        def send(self, mail_from, rcpt, data):
            if not self.sent:  # while the first message goes, the last reader clicks "leave"
                with digest_db._sessionmaker(settings.database_url)() as other:
                    sub = other.scalars(select(Subscriber).where(
                        Subscriber.email == "three@example.org")).one()
                    unsubscribe(other, sub)
                    other.commit()
            return super().send(mail_from, rcpt, data)

    transport = LeavesDuringTheBatch()
    result = send_deliveries(planned.pending_ids, transport=transport, settings=settings)
    assert sorted(rcpt for _, rcpt, _ in transport.sent) == ["one@example.org", "two@example.org"]
    assert (result.sent, result.cancelled) == (2, 1)
    rows = {d.email: d for d in _rows(session)}
    assert rows["three@example.org"].status == "cancelled"
    assert "unsubscribed" in rows["three@example.org"].note


def test_a_run_no_worker_could_start_before_its_send_by_deadline_is_held_not_sent_late(
        session, settings, planned):
    run = session.get(DigestRun, planned.run_id)
    late = run.created_at + timedelta(hours=settings.send_by_hours, minutes=1)
    assert sweep(session, settings, now=late - timedelta(minutes=2)).runs_held == []
    found = sweep(session, settings, now=late)
    assert found.runs_held == [planned.run_id] and found.orphaned == []
    session.commit()
    session.expire_all()
    assert session.get(DigestRun, planned.run_id).status == "held"
    assert {d.status for d in _rows(session)} == {"pending"}  # on record, for the operator


def test_a_run_that_has_begun_sending_is_not_held_halfway(session, settings, planned):
    first = planned.pending_ids[0]
    session.execute(update(Delivery).where(Delivery.id == first).values(status="sent"))
    session.commit()
    run = session.get(DigestRun, planned.run_id)
    late = run.created_at + timedelta(hours=settings.send_by_hours, minutes=1)
    found = sweep(session, settings, now=late)
    assert found.runs_held == [] and found.orphaned == planned.pending_ids[1:]


def test_a_real_servers_refusal_at_mail_from_puts_the_batch_back_and_the_retry_sends_it(
        session, settings, planned, monkeypatch, tmp_path):
    from digest.devtools.faultsmtp import FaultPlan, FaultySMTPServer, read_events

    record = tmp_path / "events.jsonl"
    plan = FaultPlan(temp_share=0, drop_share=0, unknown_share=0)
    with FaultySMTPServer(record, plan) as server:
        monkeypatch.setattr(settings, "smtp_host", server.host)
        monkeypatch.setattr(settings, "smtp_port", server.port)
        server.refuse_mail_from(60)
        with pytest.raises(SendSetupError, match="MAIL FROM: 554 5.7.1"):
            send_deliveries(planned.pending_ids, settings=settings)
        rows = _rows(session)
        # 5.7.1 at MAIL FROM is about our sender: no domain pause, nobody failed or suppressed.
        assert {(d.status, d.attempts) for d in rows} == {("deferred", 0)}
        assert session.scalars(select(Suppression)).all() == []
        server.refuse_mail_from(0)
        again = send_deliveries(planned.pending_ids, settings=settings,
                                now=utcnow() + timedelta(minutes=5))
        assert again.sent == 3
    accepted = [e["rcpt"] for e in read_events(record) if e["event"] == "accepted"]
    assert sorted(accepted) == ["one@example.org", "three@example.org", "two@example.org"]
