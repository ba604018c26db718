"""The sweep never waits behind the delivery backlog (issue 15, defect 8): the beat's periodic
tasks go to a queue of their own, which a worker started with only ``-Q <task queue>`` (as the
README, compose and the systemd unit start it) consumes too, in turn with the deliveries.

Real parts: a Redis of the test's own, a real Celery prefork worker with one process,
PostgreSQL, and a slow SMTP server (each batch takes a second), so ten batches are a backlog
of about ten seconds; the sweep is taken after at most two of them, whatever the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from digest import db as digest_db
from digest.devtools import MailSink
from digest.queue import BrokerQueue, _client, maintenance_queue
from digest.selection import plan_scheduled_run
from digest.settings import Settings
from tests.conftest import ROOT
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.system.test_broker_out_of_memory import wait_for_line

pytestmark = pytest.mark.integration
SECRET = "sweep-queue-test-secret-0123456789abcdef"


def test_a_sweep_sent_behind_a_backlog_of_deliveries_runs_after_at_most_two_batches(
        pg_url, own_redis, tmp_path):
    queue = f"digest-sweepq-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    readers = [f"reader{n:02}@example.org" for n in range(10)]
    with MailSink() as sink:
        settings = Settings(database_url=pg_url, broker_url=own_redis.url, task_queue=queue,
                            secret_key=SECRET, batch_size=1)
        session = digest_db._sessionmaker(pg_url)()
        t = Taxo(session)
        make_item(session, "Police reform", themes=[t.policing])
        for address in readers:
            make_subscriber(session, address)
            sink.script(address, "pause:1")
        session.commit()
        run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
        session.commit()
        session.close()
        env = {**os.environ, "DIGEST_DATABASE_URL": pg_url, "DIGEST_BROKER_URL": own_redis.url,
               "DIGEST_TASK_QUEUE": queue, "DIGEST_SMTP_HOST": sink.host,
               "DIGEST_SMTP_PORT": str(sink.port), "DIGEST_SECRET_KEY": SECRET,
               "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org", "DIGEST_BATCH_SIZE": "1",
               "DIGEST_LOG_FORMAT": "json"}
        assert BrokerQueue(settings).deliver(run.pending_ids) == len(readers)
        _client(own_redis.url).send_task("digest.sweep", queue=maintenance_queue(settings))
        worker = subprocess.Popen(
            [sys.executable,
             "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue, "-c", "1",
             "-P", "prefork", "-l", "INFO", "--without-gossip", "--without-mingle",
             "-n", f"{queue}@%h"],
            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            wait_for_line(worker, log, "digest.sweep[", timeout=60)
            deadline = time.monotonic() + 60
            while len(sink.messages) < len(readers) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    order = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line).get("event", "")
        if " succeeded in " in event:
            order.append(event.split("[", 1)[0].removeprefix("Task "))
    assert "digest.sweep" in order, log.read_text()[-3000:]
    assert order.index("digest.sweep") <= 2, order
    assert len(sink.messages) == len(readers)
