"""A real Celery worker (prefork, Redis broker) against real PostgreSQL and SQLite, delivering
to a real SMTP server; every received message is parsed and checked."""

from __future__ import annotations

import email
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import select, update

from digest import db as digest_db
from digest.devtools import MailSink
from digest.models import Delivery, DeliveryStatus
from digest.settings import reset_settings_cache
from tests.conftest import REDIS_URL, ROOT, _truncate_pg
from tests.factories import T0, Taxo, make_item, make_subscriber

pytestmark = pytest.mark.integration
PROJECT = ROOT


@pytest.fixture(scope="module")
def sink():
    with MailSink() as s:
        yield s


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def worker(request, sink, tmp_path_factory):
    """A real worker process on its own Redis queue, and this process configured to match."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database_url")
    else:
        path = tmp_path_factory.mktemp("workerdb") / "digest.db"
        url = f"sqlite:///{path}"
        digest_db.upgrade(url)
    queue = f"digest-test-{uuid.uuid4().hex[:8]}"
    env = {
        "DIGEST_DATABASE_URL": url,
        "DIGEST_BROKER_URL": REDIS_URL,
        "DIGEST_RESULT_BACKEND": REDIS_URL,
        "DIGEST_TASK_QUEUE": queue,
        "DIGEST_SMTP_HOST": sink.host,
        "DIGEST_SMTP_PORT": str(sink.port),
        "DIGEST_SECRET_KEY": "test-secret-key-not-for-production-0123",
        "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org",
        "DIGEST_RETRY_BASE_SECONDS": "0",
        "DIGEST_BATCH_SIZE": "2",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings_cache()
    from workers.celery_app import configure

    configure()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
         "-c", "2", "-P", "prefork", "-l", "INFO", "--without-gossip", "--without-mingle",
         "-n", f"{queue}@%h"],
        cwd=PROJECT, env=os.environ.copy(), stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield {"url": url, "kind": request.param, "log": log, "pid": proc.pid, "queue": queue,
           "name": f"{queue}@{socket.gethostname()}"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings_cache()
    configure()


@pytest.fixture
def data(worker, sink):
    """Fresh rows for each test: three subscribers with different filters."""
    url = worker["url"]
    # A test may end as soon as the mail arrives, while its task is still recording the
    # outcome; wiping tables under that transaction would deadlock on PostgreSQL.
    _wait_for_idle_worker(worker)
    if worker["kind"] == "postgresql":
        _truncate_pg(url)
    else:
        from digest.models import Base

        with digest_db.engine_for(url).begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    sink.clear()
    session = digest_db._sessionmaker(url)()
    t = Taxo(session)
    make_item(session, "Police <b>reform</b> & training", themes=[t.policing], locations=[t.montenegro],
              ctype=t.news)
    make_item(session, "Élections observed", themes=[t.elections], locations=[t.serbia], ctype=t.press)
    make_item(session, "Gender equality forum", themes=[t.gender], locations=[t.bishkek], ctype=t.news)
    make_subscriber(session, "police@example.org", {"themes": [t.policing]})
    make_subscriber(session, "balkans@example.org", {"locations": [t.see]})
    make_subscriber(session, "nothing@example.org", {"themes": [t.elections], "types": [t.news]})
    session.commit()
    yield session
    session.close()


def _wait_for_idle_worker(worker, timeout=60.0):
    from workers.celery_app import app

    deadline = time.monotonic() + timeout
    quiet_polls = 0
    while quiet_polls < 2:
        assert time.monotonic() < deadline, f"worker still busy:\n{worker['log'].read_text()[-2000:]}"
        inspect = app.control.inspect(destination=[worker["name"]], timeout=1.0)
        busy = [*((inspect.active() or {}).get(worker["name"], [None])),
                *((inspect.reserved() or {}).get(worker["name"], []))]
        with app.connection_for_write() as conn:
            queued = conn.default_channel.client.llen(worker["queue"])
        quiet_polls = quiet_polls + 1 if not busy and not queued else 0
        time.sleep(0.1)


def _wait_until(session, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        if predicate(rows):
            return rows
        time.sleep(0.2)
    pytest.fail(f"timed out; deliveries: {[(d.email, d.status, d.smtp_reply, d.note) for d in rows]}")


def _tick_at_t0():
    """The beat's task at T0 (Monday 07:00 UTC), when every reader of ``data`` is due: it
    plans the weekly slot and enqueues its batches to the worker, as in production."""
    from workers.tasks import tick

    return tick.delay(now=T0.isoformat()).get(timeout=60)["weekly"]


def _finished(rows):
    return rows and all(d.status not in ("pending", "sending") for d in rows)


def test_worker_plans_sends_and_logs_a_weekly_digest(worker, sink, data):
    result = _tick_at_t0()
    assert result["created"] and result["pending"] == 2 and result["skipped"] == 1
    rows = _wait_until(data, _finished)
    by_email = {d.email: d for d in rows}
    assert by_email["nothing@example.org"].status == "skipped"
    assert {by_email[e].status for e in ("police@example.org", "balkans@example.org")} == {"sent"}
    messages = sink.wait_for(2)
    assert len(messages) == 2
    for received in messages:
        msg = email.message_from_bytes(received.data, policy=policy.default)
        row = by_email[msg["To"]]
        assert msg["Message-ID"] == row.message_id
        assert row.smtp_code == 250 and row.sent_at is not None
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "https://digest.example.org/unsubscribe/" in msg["List-Unsubscribe"]
        assert msg.get_content_type() == "multipart/alternative"
        text, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert received.mail_from == f"bounces+{row.id}@newsroom.example.org"
        if msg["To"] == "police@example.org":
            assert "Police reform & training" in text.get_content()
            assert "Élections observed" not in text.get_content()
            assert "Police reform &amp; training" in html.get_content()
        else:
            assert "Police reform & training" in text.get_content()
            assert "Élections observed" in text.get_content()
            assert "Gender equality forum" not in text.get_content()


def test_rerunning_a_delivery_task_on_the_worker_sends_nothing_twice(worker, sink, data):
    from workers.tasks import deliver_batch

    _tick_at_t0()
    rows = _wait_until(data, _finished)
    sink.wait_for(2)
    sent_ids = [d.id for d in rows if d.status == "sent"]
    # The broker redelivers, an operator clicks twice: the rows are already sent.
    again = deliver_batch.delay(sent_ids).get(timeout=60)
    assert again == {"claimed": 0, "sent": 0, "deferred": 0, "failed": 0, "cancelled": 0}
    time.sleep(0.5)
    assert len(sink.messages) == 2


def test_a_4xx_reply_is_deferred_then_sent_by_the_retry_task(worker, sink, data):
    from workers.tasks import retry_deferred

    sink.script("police@example.org", "451 4.3.0 Mailbox busy, try later")
    _tick_at_t0()
    rows = _wait_until(data, _finished)
    police = next(d for d in rows if d.email == "police@example.org")
    assert police.status == "deferred" and police.smtp_code == 451 and police.next_attempt_at
    assert police.smtp_reply == "451 4.3.0 Mailbox busy, try later"
    assert retry_deferred.delay().get(timeout=60) == 1
    rows = _wait_until(data, lambda rs: any(d.email == "police@example.org" and d.status == "sent"
                                            for d in rs))
    police = next(d for d in rows if d.email == "police@example.org")
    assert police.attempts == 2
    assert sorted(m.rcpt_tos[0] for m in sink.wait_for(2)) == ["balkans@example.org", "police@example.org"]


def test_a_5xx_unknown_user_fails_with_its_code_and_suppresses_the_address(worker, sink, data):
    from digest.models import Subscriber, Suppression
    sink.script("balkans@example.org", "550 5.1.1 No such user here")
    _tick_at_t0()
    rows = _wait_until(data, _finished)
    bad = next(d for d in rows if d.email == "balkans@example.org")
    assert bad.status == "failed" and bad.smtp_code == 550
    # The server's words as it said them; ours, naming the step, apart.
    assert bad.smtp_reply == "550 5.1.1 No such user here" and "at RCPT TO" in bad.note
    assert data.scalars(select(Suppression.email)).all() == ["balkans@example.org"]
    assert data.scalars(select(Subscriber.status).where(Subscriber.email == "balkans@example.org")).one() == "suppressed"


def test_expired_lease_is_recovered_and_sent(worker, sink, data):
    from workers.tasks import sweep

    sink.script("police@example.org", "drop")
    _tick_at_t0()
    rows = _wait_until(data, _finished)
    police = next(d for d in rows if d.email == "police@example.org")
    assert police.status == "deferred"  # the dropped connection
    # Simulate a worker killed mid-send: the row is stuck in 'sending' with a lapsed lease.
    data.execute(update(Delivery).where(Delivery.id == police.id).values(
        status=DeliveryStatus.sending.value, lease_until=T0 - timedelta(minutes=1)))
    data.commit()
    assert sweep.delay().get(timeout=60)["recovered"] == 1
    _wait_until(data, lambda rs: all(d.status in ("sent", "skipped") for d in rs))


def test_beat_ticks_twice_in_one_slot_and_only_one_run_is_planned(worker, sink, data):
    from digest.models import DigestRun, Subscriber
    from workers.tasks import tick

    # Only one subscriber is due at T0 (Monday 07:00 UTC), in their own time zone (UTC+2 in Oct).
    data.execute(update(Subscriber).values(hour=12))
    data.execute(update(Subscriber).where(Subscriber.email == "police@example.org")
                 .values(timezone="Europe/Vienna", weekday=0, hour=9))
    data.commit()
    first = tick.delay(now=T0.isoformat()).get(timeout=60)
    second = tick.delay(now=(T0 + timedelta(minutes=5)).isoformat()).get(timeout=60)
    assert first["weekly"]["created"] and first["weekly"]["pending"] == 1
    assert not second["weekly"]["created"] and second["weekly"]["run_id"] == first["weekly"]["run_id"]
    rows = _wait_until(data, _finished)
    assert [(d.email, d.status) for d in rows] == [("police@example.org", "sent")]  # nobody else due
    assert len(data.scalars(select(DigestRun).where(DigestRun.kind == "weekly")).all()) == 1
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["police@example.org"]]


def test_item_published_event_sends_an_alert_to_immediate_subscribers(worker, sink, data):
    from digest.ingest import parse_json_items, store_items
    from digest.models import Subscriber
    from workers.tasks import item_published

    data.execute(update(Subscriber).where(Subscriber.email == "nothing@example.org")
                 .values(frequency="immediate"))
    data.commit()
    items = parse_json_items('{"guid": "urn:x:1", "url": "https://newsroom.example.org/items/vote",'
                             ' "title": "Election day observed", "content_type": "News",'
                             ' "themes": ["Elections"], "locations": ["OSCE Mission to Serbia"],'
                             f' "published_at": "{T0.isoformat()}"}}')
    report = store_items(data, items, source="test", now=T0, max_age_days=30)
    data.commit()
    result = item_published.delay(report.new_item_ids[0]).get(timeout=60)
    assert result["pending"] == 1
    received = sink.wait_for(1)[0]
    msg = email.message_from_bytes(received.data, policy=policy.default)
    assert msg["To"] == "nothing@example.org"
    assert "Election day observed" in msg.get_body(("plain",)).get_content()


def _worker_children(parent_pid: int) -> list[int]:
    children = Path(f"/proc/{parent_pid}/task/{parent_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_worker_killed_mid_send_loses_nothing_and_sends_nothing_twice(worker, sink, data):
    import signal

    from workers.tasks import sweep

    # The first recipient's server is slow: the worker is stuck mid-transaction when killed.
    sink.script("police@example.org", "pause:20")
    _tick_at_t0()
    _wait_until(data, lambda rs: any(d.status == "sending" for d in rs))
    time.sleep(0.5)
    for pid in _worker_children(worker["pid"]):
        os.kill(pid, signal.SIGKILL)
    # acks_late + reject/retry on worker loss: the batch runs again on a new child, finds
    # its rows claimed under a live lease and sends nothing.
    deadline = time.monotonic() + 30
    while "WorkerLostError" not in worker["log"].read_text():
        assert time.monotonic() < deadline, worker["log"].read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(2)
    _wait_until(data, lambda rs: all(d.status in ("sending", "skipped") for d in rs))
    assert sink.messages == []
    # Time passes: the lease lapses and the periodic recovery hands the rows back.
    data.execute(update(Delivery).where(Delivery.status == "sending")
                 .values(lease_until=T0 - timedelta(minutes=1)))
    data.commit()
    assert sweep.delay().get(timeout=60)["recovered"] == 2
    _wait_until(data, lambda rs: all(d.status in ("sent", "skipped") for d in rs))
    assert sorted(m.rcpt_tos[0] for m in sink.wait_for(2)) == ["balkans@example.org", "police@example.org"]
    time.sleep(1)
    assert len(sink.messages) == 2
