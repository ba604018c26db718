"""A worker that cannot reach the database does not take tasks and drop them (issue 15,
defect 8): the task goes back to the queue with a growing delay and runs once PostgreSQL is
back, with no beat and no sweep to find its rows.

Real parts only: a PostgreSQL and a Redis of the test's own (the PostgreSQL stopped and
started again by the test), a real Celery prefork worker, an SMTP server that keeps what it
receives."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from digest import db as digest_db
from digest.devtools import MailSink
from digest.models import Delivery
from digest.queue import BrokerQueue
from digest.selection import plan_scheduled_run
from digest.settings import Settings
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.system.test_broker_out_of_memory import start_worker, wait_for_line

pytestmark = pytest.mark.integration
SECRET = "database-down-test-secret-0123456789abcdef"
DOWN_FOR_SECONDS = 8


def test_tasks_taken_while_the_database_is_down_run_once_it_is_back(
        own_postgres, own_redis, tmp_path):
    url = own_postgres.url
    digest_db.upgrade(url)
    queue = f"digest-dbdown-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    readers = [f"reader{n}@example.org" for n in range(6)]
    with MailSink() as sink:
        settings = Settings(database_url=url, broker_url=own_redis.url, task_queue=queue,
                            secret_key=SECRET, batch_size=3)
        engine = create_engine(url)
        with Session(engine) as session:
            t = Taxo(session)
            make_item(session, "Police reform", themes=[t.policing])
            for address in readers:
                make_subscriber(session, address)
            session.commit()
            run = plan_scheduled_run(session, "weekly", now=T0, everyone=True,
                                     settings=settings)
            session.commit()
        engine.dispose()
        digest_db.engine_for(url).dispose()
        env = {**os.environ, "DIGEST_DATABASE_URL": url, "DIGEST_BROKER_URL": own_redis.url,
               "DIGEST_TASK_QUEUE": queue, "DIGEST_SMTP_HOST": sink.host,
               "DIGEST_SMTP_PORT": str(sink.port), "DIGEST_SECRET_KEY": SECRET,
               "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org", "DIGEST_BATCH_SIZE": "3"}
        worker = start_worker(queue, env, log)
        try:
            own_postgres.stop()
            assert BrokerQueue(settings).deliver(run.pending_ids) == 2
            wait_for_line(worker, log, "Retry in")  # taken, refused by the database, requeued
            time.sleep(DOWN_FOR_SECONDS)
            assert not sink.messages
            own_postgres.start()
            deadline = time.monotonic() + 120
            while len(sink.messages) < len(readers) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2)  # a second copy, had there been one, would have arrived by now
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        received = Counter(m.rcpt_tos[0] for m in sink.messages)
        assert received == Counter({address: 1 for address in readers}), log.read_text()[-3000:]
        engine = create_engine(url)
        with Session(engine) as session:
            statuses = dict(session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)).all())
        engine.dispose()
        assert statuses == {"sent": len(readers)}
