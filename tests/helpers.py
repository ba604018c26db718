"""Helpers the tiers share that are not test data: a free local port for a server a test
starts, and dkimpy's DNS look-up answered offline."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# The DKIM selector the tests sign with, and the default From's domain (so DKIM's d=).
SELECTOR = "digest2025"
DOMAIN = "newsroom.example.org"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_dns(record: bytes) -> Callable[..., bytes | None]:
    """dkimpy's DNS lookup, answered offline for our selector only."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None
    return dnsfunc


def start_celery(args: list[str], env: dict[str, str], log: Path, ready: str,
                 cwd: Path) -> subprocess.Popen:
    """A real Celery process (``worker ...`` or ``beat ...``) of the project's app, its output
    in ``log``; returns once ``ready`` is logged (the test fails, naming the log, otherwise)."""
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", *args],
                            cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while ready not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{args[0]} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a process started above: TERM, then KILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
