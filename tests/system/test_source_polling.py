"""A source added once is polled by the real beat and a real worker (Celery on Redis), into
SQLite and PostgreSQL, from the tests' own newsroom server; its new items are announced."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis
from sqlalchemy import func, select

from digest import db as digest_db
from digest.ingest import registry
from digest.models import Item, Source
from digest.settings import Settings
from tests.conftest import REDIS_URL, ROOT
from tests.helpers import start_celery, stop_process
from tests.sourceserver import SourceServer, rss
from workers.beat import lock_key

pytestmark = pytest.mark.integration


def test_a_source_added_once_is_polled_by_the_beat_and_a_worker(db_url, tmp_path):
    queue = f"digest-sources-{uuid.uuid4().hex[:8]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")},
           "DIGEST_DATABASE_URL": db_url, "DIGEST_BROKER_URL": REDIS_URL,
           "DIGEST_TASK_QUEUE": queue, "DIGEST_SOURCE_POLL_SECONDS": "5",
           "DIGEST_SOURCES_ALLOW_PRIVATE": "true",
           "DIGEST_SECRET_KEY": "test-secret-key-not-for-production-0123",
           "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org"}
    client = redis.Redis.from_url(REDIS_URL)
    with SourceServer() as server:
        server.serve("/feed.xml", rss(("w-1", "Polled by the beat"), ("w-2", "And a worker")))
        settings = Settings(_env_file=None, database_url=db_url, sources_allow_private=True)
        with digest_db.session_scope(db_url) as session:
            registry.add_source(session, server.url("/feed.xml"), settings=settings,
                                every="1h")
        worker = start_celery(["worker", "-Q", queue, "-c", "2", "-P", "prefork", "-l", "INFO",
                               "--without-gossip", "--without-mingle", "-n", f"{queue}@%h"],
                              env, tmp_path / "worker.log", "ready.", ROOT)
        beat = start_celery(["beat", "-l", "INFO", "-s", str(tmp_path / "beat-schedule")], env,
                            tmp_path / "beat.log", "beat: Starting", ROOT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _items(db_url) < 2:
                time.sleep(0.5)
            log = (tmp_path / "worker.log").read_text()
            assert _items(db_url) == 2, log[-3000:]
            time.sleep(6)  # another beat's poll: the source is not due again for an hour
        finally:
            stop_process(beat)
            stop_process(worker)
            client.delete(queue, f"{queue}.maintenance", lock_key(queue))
        assert server.hits("/feed.xml") == 1
        log = (tmp_path / "worker.log").read_text()
        assert "digest.poll_sources" in log and "digest.item_published" in log
        with digest_db.session_scope(db_url) as session:
            polled = session.scalars(select(Source)).one()
            assert polled.items_added == 2 and polled.last_success_at is not None
            assert polled.polls == 1 and polled.lease_token is None
    digest_db.engine_for(db_url).dispose()


def _items(url: str) -> int:
    with digest_db.session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Item)) or 0
