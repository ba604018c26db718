"""A Redis out of memory for a while does not kill the workers (issue 15, defect 1).

Real parts only: a Redis of the test's own whose memory the test fills (``maxmemory`` under
what it uses: every write refused, as when full), a real Celery prefork worker, PostgreSQL and
an SMTP server that keeps what it receives. Before the fix, kombu's acknowledgement of the
batch in flight raised ``OutOfMemoryError`` and the worker exited ("Unrecoverable error").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digest import db as digest_db
from digest.devtools import MailSink
from digest.models import Delivery
from digest.queue import BrokerQueue
from digest.selection import plan_scheduled_run
from digest.settings import Settings
from tests.conftest import ROOT
from tests.factories import T0, Taxo, make_item, make_subscriber

pytestmark = pytest.mark.integration
SECRET = "broker-oom-test-secret-0123456789abcdef"
FULL_FOR_SECONDS = 25


def start_worker(queue: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
         "-c", "2", "-P", "prefork", "-l", "INFO", "--without-gossip", "--without-mingle",
         "-n", f"{queue}@%h"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    wait_for_line(proc, log, "ready.")
    return proc


def wait_for_line(proc: subprocess.Popen, log: Path, line: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the worker never logged {line!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_a_worker_outlives_a_redis_out_of_memory_and_the_send_completes(
        pg_url, own_redis, tmp_path):
    queue = f"digest-oom-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    with MailSink() as sink:
        env = {**os.environ, "DIGEST_DATABASE_URL": pg_url, "DIGEST_BROKER_URL": own_redis.url,
               "DIGEST_TASK_QUEUE": queue, "DIGEST_SMTP_HOST": sink.host,
               "DIGEST_SMTP_PORT": str(sink.port), "DIGEST_SECRET_KEY": SECRET,
               "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org",
               "DIGEST_BATCH_SIZE": "4"}
        settings = Settings(database_url=pg_url, broker_url=own_redis.url, task_queue=queue,
                            secret_key=SECRET, batch_size=4)
        session = digest_db._sessionmaker(pg_url)()
        t = Taxo(session)
        make_item(session, "Police reform", themes=[t.policing])
        readers = [f"reader{n:02}@example.org" for n in range(12)]
        for address in readers:
            make_subscriber(session, address)
        session.commit()
        run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
        session.commit()
        # The first batch's server is slow: the batch is still being sent when Redis fills.
        first_batch = sorted(readers)[:4]
        sink.script(first_batch[0], "pause:4")

        worker = start_worker(queue, env, log)
        try:
            ids = sorted(run.pending_ids)
            assert BrokerQueue(settings).deliver(ids[:8]) == 2
            wait_for_line(worker, log, "received")
            own_redis.fill_memory()
            full_until = time.monotonic() + FULL_FOR_SECONDS
            while time.monotonic() < full_until:
                assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
            own_redis.free_memory()
            # Work enqueued once Redis takes writes again is taken by the same worker.
            assert BrokerQueue(settings).deliver(ids[8:]) == 1

            deadline = time.monotonic() + 90
            while len(sink.messages) < len(readers) and time.monotonic() < deadline:
                assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
            time.sleep(2)  # a second copy, had there been one, would have arrived by now
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        assert "Unrecoverable error" not in log.read_text()
        received = Counter(m.rcpt_tos[0] for m in sink.messages)
        assert received == Counter({address: 1 for address in readers})
        session.expire_all()
        statuses = dict(session.execute(
            select(Delivery.status, func.count()).where(Delivery.run_id == run.run_id)
            .group_by(Delivery.status)).all())
        assert statuses == {"sent": len(readers)}
        session.close()
