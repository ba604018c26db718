"""A real worker's log level (Redis broker, prefork pool): DIGEST_LOG_LEVEL when it is set,
else the `-l` given to `celery worker`, else INFO; so a worker started as the README shows it
(no `-l`) logs its INFO lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis

from digest import db as digest_db
from tests.conftest import REDIS_URL, ROOT


def _run_worker(tmp_path, level_args: list[str], digest_level: str | None,
                wait_for_task_line: bool = False) -> list[dict]:
    """Start a worker, have it run one task (the sweep), stop it; its JSON log lines."""
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    digest_db.upgrade(url)
    digest_db.engine_for(url).dispose()
    queue = f"digest-test-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env |= {"DIGEST_DATABASE_URL": url, "DIGEST_BROKER_URL": REDIS_URL,
            "DIGEST_RESULT_BACKEND": REDIS_URL, "DIGEST_TASK_QUEUE": queue,
            "DIGEST_LOG_FORMAT": "json",
            "DIGEST_SECRET_KEY": "test-secret-key-not-for-production-0123"}
    if digest_level is not None:
        env["DIGEST_LOG_LEVEL"] = digest_level
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
         "-c", "1", "--without-gossip", "--without-mingle", "-n", f"{queue}@%h", *level_args],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        from celery import Celery

        client = Celery("test-client", broker=REDIS_URL, backend=REDIS_URL)
        result = client.send_task("digest.sweep", queue=queue)
        assert result.get(timeout=60)["recovered"] == 0, log.read_text()[-3000:]
        # The pool process's last lines reach the log a moment after the result.
        deadline = time.monotonic() + 10
        while (wait_for_task_line and "digest.sweep" not in log.read_text()
               and time.monotonic() < deadline):
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        redis.Redis.from_url(REDIS_URL).delete(queue)
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _info_lines(lines: list[dict]) -> list[str]:
    return [line["event"] for line in lines if line.get("level") == "info"]


def test_a_worker_started_without_l_logs_at_info_as_digest_log_level_says_by_default(tmp_path):
    lines = _run_worker(tmp_path, [], None, wait_for_task_line=True)
    info = _info_lines(lines)
    assert any(event.endswith(" ready.") for event in info), lines
    # The pool process that ran the task logs at the same level.
    assert any("digest.sweep" in event and "succeeded" in event for event in info), info


@pytest.mark.parametrize(("level_args", "digest_level"), [
    pytest.param(["-l", "INFO"], "WARNING", id="DIGEST_LOG_LEVEL-wins-over-l"),
    pytest.param(["-l", "WARNING"], None, id="l-without-DIGEST_LOG_LEVEL"),
])
def test_a_worker_logs_nothing_below_the_level_the_operator_asked_for(tmp_path, level_args,
                                                                      digest_level):
    lines = _run_worker(tmp_path, level_args, digest_level)
    assert _info_lines(lines) == []
