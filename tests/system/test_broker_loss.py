"""A broker restart loses the queued tasks of a planned run; the sweep finds the rows again.

Real parts only: a Redis of the test's own (no persistence, restarted by the test), a real
Celery prefork worker and beat, PostgreSQL and SQLite, and an SMTP server that keeps what it
receives. The machine's own Redis is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from digest import db as digest_db
from digest.devtools import MailSink
from digest.models import Delivery
from digest.queue import BrokerQueue
from digest.selection import plan_scheduled_run
from digest.settings import Settings
from tests.conftest import ROOT
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.helpers import free_port, start_celery, stop_process

pytestmark = pytest.mark.integration
PROJECT = ROOT
SECRET = "broker-loss-test-secret-0123456789abcdef"


class OwnRedis:
    """A redis-server of this test's own, without persistence, that it may restart."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; the broker-loss test needs one of its own")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_run_planned_before_a_broker_restart_is_sent_once_to_everyone_without_an_operator(
        db_url, own_redis, tmp_path):
    queue = f"digest-loss-{uuid.uuid4().hex[:8]}"
    with MailSink() as sink:
        env = {**os.environ, "DIGEST_DATABASE_URL": db_url, "DIGEST_BROKER_URL": own_redis.url,
               "DIGEST_TASK_QUEUE": queue, "DIGEST_SMTP_HOST": sink.host,
               "DIGEST_SMTP_PORT": str(sink.port), "DIGEST_SECRET_KEY": SECRET,
               "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org",
               "DIGEST_BATCH_SIZE": "5", "DIGEST_SWEEP_SECONDS": "1",
               "DIGEST_ORPHAN_AFTER_SECONDS": "2", "DIGEST_RETRY_BASE_SECONDS": "1"}
        settings = Settings(database_url=db_url, broker_url=own_redis.url, task_queue=queue,
                            secret_key=SECRET, batch_size=5)
        session = digest_db._sessionmaker(db_url)()
        t = Taxo(session)
        make_item(session, "Police reform", themes=[t.policing])
        readers = [f"reader{n}@example.org" for n in range(23)]
        for address in readers:
            make_subscriber(session, address)
        session.commit()
        run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
        session.commit()
        # Enqueued after the commit, while no worker is up: the tasks wait in Redis...
        assert BrokerQueue(settings).deliver(run.pending_ids) == 5
        assert redis.Redis.from_url(own_redis.url).llen(queue) == 5
        # ...and a restart of a Redis that keeps nothing on disk drops all of them.
        own_redis.stop()
        own_redis.start()
        assert redis.Redis.from_url(own_redis.url).llen(queue) == 0

        worker = start_celery(["worker", "-Q", queue, "-c", "2", "-P", "prefork", "-l", "INFO",
                               "--without-gossip", "--without-mingle", "-n", f"{queue}@%h"],
                              env, tmp_path / "worker.log", "ready.", PROJECT)
        beat = start_celery(["beat", "-s", str(tmp_path / "beat-schedule"), "-l", "INFO"], env,
                            tmp_path / "beat.log", "beat: Starting", PROJECT)
        try:
            deadline = time.monotonic() + 90
            while len(sink.messages) < len(readers) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(3)  # a second copy, had there been one, would have arrived by now
        finally:
            stop_process(beat)
            stop_process(worker)
        received = Counter(m.rcpt_tos[0] for m in sink.messages)
        assert received == Counter({address: 1 for address in readers})
        session.expire_all()
        statuses = dict(session.execute(
            select(Delivery.status, func.count()).where(Delivery.run_id == run.run_id)
            .group_by(Delivery.status)).all())
        assert statuses == {"sent": len(readers)}
        assert "digest.sweep" in (tmp_path / "beat.log").read_text()
        session.close()
