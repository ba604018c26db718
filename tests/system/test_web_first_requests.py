"""The first burst of sign-ups a fresh web process gets, with a broker configured (real Redis),
on SQLite and PostgreSQL: no 500. Celery used to be imported, and its client made, by the
first requests' threads at once, and its lazy imports raced ("cannot import name 'Celery'
from 'celery'"); now both happen when the app is made, before anything listens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import httpx
import redis

from digest.web.pages import make_csrf
from tests.conftest import REDIS_URL, ROOT
from tests.helpers import free_port

BURST = 200

# A fresh interpreter serving the app as `digest web` does (uvicorn, its thread pool); it
# says which of Celery's modules were loaded once the server listened, then serves until
# its stdin closes.
SERVE = """
import json, sys, threading, time
import uvicorn
from digest.settings import get_settings
from digest.web import create_app

server = uvicorn.Server(uvicorn.Config(create_app(get_settings()), host="127.0.0.1",
                                       port=int(sys.argv[1]), log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.05)
print(json.dumps({"celery_loaded": "celery.app.base" in sys.modules}), flush=True)
sys.stdin.read()
server.should_exit = True
thread.join(10)
"""


def test_a_fresh_app_answers_a_burst_of_concurrent_first_sign_ups_without_a_500(settings):
    queue = f"digest-test-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env |= {"DIGEST_DATABASE_URL": settings.database_url, "DIGEST_BROKER_URL": REDIS_URL,
            "DIGEST_TASK_QUEUE": queue, "DIGEST_EMAIL_RATE_LIMIT": "10/minute",
            "DIGEST_SECRET_KEY": settings.secret_key.get_secret_value(),
            "DIGEST_LOG_FORMAT": "json"}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(server.stdout.readline() or "{}")
        assert started, server.stderr.read()[-3000:] if server.poll() is not None else "no line"
        # Deterministic half: nothing of Celery is left to import in a request's thread.
        assert started["celery_loaded"] is True
        codes = _burst(f"http://127.0.0.1:{port}", make_csrf(settings, "subscribe"))
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        redis.Redis.from_url(REDIS_URL).delete(queue)
    assert codes == Counter({200: BURST}), server.stderr.read()[-3000:]


def _burst(base: str, csrf: str) -> Counter:
    """BURST sign-ups, all released at the same instant, each on its own connection."""
    barrier = threading.Barrier(BURST)
    codes: list[int] = []
    lock = threading.Lock()

    def sign_up(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            barrier.wait(timeout=60)
            response = client.post("/subscribe", data={
                "csrf": csrf, "email": f"burst-{n}@example.org", "mode": "everything",
                "frequency": "weekly", "weekday": "0", "hour": "8", "timezone": "UTC",
                "group_by": "theme"})
        with lock:
            codes.append(response.status_code)

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(BURST)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return Counter(codes)
