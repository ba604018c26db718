"""Two beats against one Redis: only the holder of the beat lock sends periodic tasks, and
the standby takes over within the lock's time to live when the holder dies (ADR 0017).

Real parts: the machine's Redis (a queue and lock of this test's own), two `celery beat`
processes. No worker runs, so every task a beat sent is still in the queue, with the pid of
the process that sent it (kombu's `origin` header).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT
from workers.beat import lock_key

REDIS_URL = "redis://127.0.0.1:6379/0"
LOCK_SECONDS = 3


def start_beat(env: dict[str, str], tmp_path: Path, name: str) -> subprocess.Popen:
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "-l", "INFO",
         "-s", str(tmp_path / f"{name}-schedule")],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 60
    while "beat: Starting" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"beat {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def senders(client: redis.Redis, queue: str) -> Counter[int]:
    """Tasks waiting in the queue's maintenance queue (where the beat sends its periodic
    tasks), counted by the pid of the process that sent them."""
    counts: Counter[int] = Counter()
    for raw in client.lrange(f"{queue}.maintenance", 0, -1):
        origin = json.loads(raw)["headers"]["origin"]  # "gen<pid>@<host>"
        counts[int(origin.split("@")[0].removeprefix("gen"))] += 1
    return counts


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def beat_env(tmp_path):
    queue = f"digest-beat-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DIGEST_BROKER_URL": REDIS_URL, "DIGEST_TASK_QUEUE": queue,
           "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'beat.db'}",
           "DIGEST_SWEEP_SECONDS": "1", "DIGEST_RETRY_SWEEP_SECONDS": "1",
           "DIGEST_BEAT_LOCK_SECONDS": str(LOCK_SECONDS)}
    client = redis.Redis.from_url(REDIS_URL)
    yield env, queue, client
    client.delete(queue, f"{queue}.maintenance", lock_key(queue))


def test_of_two_beats_only_the_lock_holder_sends_and_the_other_takes_over_when_it_dies(
        beat_env, tmp_path):
    env, queue, client = beat_env
    first = start_beat(env, tmp_path, "first")
    second = start_beat(env, tmp_path, "second")
    try:
        assert wait_for(lambda: client.get(lock_key(queue)) is not None, 10)
        holder, standby = ((first, second) if f":{first.pid}:".encode()
                           in client.get(lock_key(queue)) else (second, first))
        time.sleep(4)  # four sweeps' worth of ticks, both beats up
        sent = senders(client, queue)
        assert sent[holder.pid] >= 4, sent
        assert standby.pid not in sent, f"the standby beat sent tasks: {sent}"

        holder.send_signal(signal.SIGKILL)  # no release: the lock has to expire
        killed_at = time.monotonic()
        holder.wait()
        assert wait_for(lambda: senders(client, queue)[standby.pid] > 0, LOCK_SECONDS + 3), (
            (tmp_path / "second.log").read_text()[-2000:])
        took_over = time.monotonic() - killed_at
        assert took_over <= LOCK_SECONDS + 2, f"took over after {took_over:.1f} s"
        assert f":{standby.pid}:".encode() in client.get(lock_key(queue))
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_beat_stopped_cleanly_hands_the_lock_over_at_once(beat_env, tmp_path):
    env, queue, client = beat_env
    env = {**env, "DIGEST_BEAT_LOCK_SECONDS": "30"}  # an expiry would take far longer
    first = start_beat(env, tmp_path, "first")
    assert wait_for(lambda: senders(client, queue)[first.pid] > 0, 10)
    second = start_beat(env, tmp_path, "second")
    try:
        time.sleep(1.5)
        assert second.pid not in senders(client, queue)
        first.terminate()
        stopped_at = time.monotonic()
        first.wait(timeout=20)
        assert wait_for(lambda: senders(client, queue)[second.pid] > 0, 5)
        assert time.monotonic() - stopped_at < 5
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
