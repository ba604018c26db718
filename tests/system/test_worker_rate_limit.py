"""DIGEST_SEND_RATE on a real Celery worker (prefork, three processes, Redis broker and Redis
limiter) against PostgreSQL, sending to a real SMTP server: a weekly run of 20 readers at
5 messages a second goes out whole, each delivery sent on its first attempt (the rows the
limit deferred were re-enqueued by the deliver task through ``TaskQueue.deliver_at``, their
attempt given back), and no faster than the shared bucket allows across the processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest
from sqlalchemy import select

from digest import db as digest_db
from digest.devtools import MailSink
from digest.models import Delivery
from digest.settings import reset_settings_cache
from tests.conftest import REDIS_URL, ROOT
from tests.factories import T0, Taxo, make_item, make_subscriber

pytestmark = pytest.mark.integration

READERS = 20
RATE = 5.0
BURST = max(1.0, RATE)  # digest.delivery.limits: one second's worth of tokens


@pytest.fixture
def rate_limited_worker(pg_database_url, monkeypatch, tmp_path):
    """A prefork worker of three processes on its own queue, DIGEST_SEND_RATE=5, small
    batches (so several processes take from the bucket at once), and this process matching."""
    from workers.celery_app import configure

    sink = MailSink().start()
    queue = f"digest-rate-{uuid.uuid4().hex[:8]}"
    for key, value in {
        "DIGEST_DATABASE_URL": pg_database_url, "DIGEST_BROKER_URL": REDIS_URL,
        "DIGEST_RESULT_BACKEND": REDIS_URL, "DIGEST_TASK_QUEUE": queue,
        "DIGEST_SMTP_HOST": sink.host, "DIGEST_SMTP_PORT": str(sink.port),
        "DIGEST_SECRET_KEY": "test-secret-key-not-for-production-0123",
        "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org",
        "DIGEST_RETRY_BASE_SECONDS": "0", "DIGEST_BATCH_SIZE": "2",
        "DIGEST_SEND_RATE": str(RATE),
    }.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    configure()
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
         "-c", "3", "-P", "prefork", "-l", "INFO", "--without-gossip", "--without-mingle",
         "-n", f"{queue}@%h"],
        cwd=ROOT, env=os.environ.copy(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield {"url": pg_database_url, "sink": sink, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        sink.stop()
        monkeypatch.undo()
        reset_settings_cache()
        configure()


def _readers(url: str) -> None:
    from tests.conftest import _truncate_pg

    _truncate_pg(url)
    with digest_db._sessionmaker(url)() as session:
        t = Taxo(session)
        make_item(session, "Police reform & training", themes=[t.policing],
                  locations=[t.montenegro], ctype=t.news)
        for n in range(READERS):
            make_subscriber(session, f"reader{n:02d}@example.org", {"themes": [t.policing]})
        session.commit()


def test_a_run_over_the_send_rate_is_sent_whole_at_the_rate_each_on_its_first_attempt(
        rate_limited_worker):
    from workers.tasks import tick

    url, sink = rate_limited_worker["url"], rate_limited_worker["sink"]
    _readers(url)
    # Let the shared bucket fill (a second at this rate), whatever an earlier run left in it.
    time.sleep(1.2)
    started = time.monotonic()
    planned = tick.delay(now=T0.isoformat()).get(timeout=60)["weekly"]
    assert planned["pending"] == READERS
    received = sink.wait_for(READERS, timeout=25)
    elapsed = time.monotonic() - started

    with digest_db._sessionmaker(url)() as session:
        deadline = time.monotonic() + 10
        while True:  # the last task may still be recording its outcome after the mail arrived
            session.expire_all()
            rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
            if all(d.status == "sent" for d in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(rows) == READERS
    assert [(d.email, d.status, d.attempts) for d in rows if d.status != "sent" or d.attempts != 1] \
        == [], [(d.email, d.status, d.attempts, d.note) for d in rows]
    assert all(d.smtp_code == 250 and d.sent_at is not None for d in rows)

    # Every message arrived once, to its reader, with the delivery's Message-ID.
    assert len(received) == READERS
    by_email = {d.email: d for d in rows}
    seen = []
    for message in received:
        parsed = message.parsed()
        row = by_email[parsed["To"]]
        assert parsed["Message-ID"] == row.message_id
        assert "Police reform & training" in parsed.get_body(("plain",)).get_content()
        seen.append(parsed["To"])
    assert sorted(seen) == sorted(by_email)

    # The bucket allows BURST at once, then RATE a second, whichever process takes.
    floor = (READERS - BURST) / RATE
    assert elapsed >= floor * 0.9, elapsed
    sent_at = sorted(d.sent_at for d in rows)
    assert (sent_at[-1] - sent_at[0]).total_seconds() >= floor * 0.8, sent_at
    # Rows over the limit went again from tasks the deliver task enqueued (deliver_at, an
    # eta): more tasks ran than the run's batches; and tasks ran at the same time, so in
    # different processes of the worker, all taking from the one bucket in Redis.
    tasks = _task_intervals(rate_limited_worker["log"].read_text())
    assert len(tasks) > READERS // 2, len(tasks)
    assert any(later[0] < earlier[1] for earlier, later in zip(tasks, tasks[1:], strict=False)), \
        tasks


def _task_intervals(log: str) -> list[tuple[float, float]]:
    """(start, end) of each finished deliver task, from the worker's JSON log, by start."""
    intervals = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        done = re.match(r"Task digest\.deliver_batch\[[^\]]+\] succeeded in ([0-9.e-]+)s",
                        record.get("event", ""))
        if done:
            end = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            intervals.append((end - float(done.group(1)), end))
    return sorted(intervals)
