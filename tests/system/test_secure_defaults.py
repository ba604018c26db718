"""digest web and the Celery worker, started as processes with PostgreSQL, refuse a weak key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digest.settings import BUILTIN_SECRET_KEY
from tests.conftest import ROOT

PROJECT = ROOT
DIGEST = str(Path(sys.executable).with_name("digest"))
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BAD_KEYS = {"built-in": BUILTIN_SECRET_KEY, "empty": "", "short": "x" * 31}


def clean_env(**digest: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DIGEST_")}
    return env | {f"DIGEST_{k.upper()}": v for k, v in digest.items()}


def assert_refused(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: DIGEST_SECRET_KEY is ")
    assert "at least 32 characters" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_digest_web_with_postgresql_refuses_a_known_empty_or_short_key(tmp_path, key):
    env = clean_env(database_url=PG, secret_key=key)
    proc = subprocess.run([DIGEST, "web", "--port", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert_refused(proc)


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_celery_worker_with_postgresql_refuses_a_known_empty_or_short_key(key):
    env = clean_env(database_url=PG, secret_key=key, broker_url="redis://127.0.0.1:6379/15")
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
         "digest-refused", "-c", "1", "--without-gossip", "--without-mingle"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert_refused(proc)
