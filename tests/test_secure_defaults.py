"""Outside the built-in SQLite file, `digest web` and the Celery workers refuse to start with
the built-in, an empty or a short DIGEST_SECRET_KEY: one line naming the variable, exit 1,
no traceback. The built-in file (the demo, a first try) still needs no settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digest.errors import ConfigError
from digest.settings import BUILTIN_SECRET_KEY, Settings, check_secrets

PROJECT = Path(__file__).resolve().parent.parent
DIGEST = str(Path(sys.executable).with_name("digest"))
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BAD_KEYS = {"built-in": BUILTIN_SECRET_KEY, "empty": "", "short": "x" * 31}
GOOD_KEY = "k" * 32


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


def test_another_sqlite_file_is_not_the_built_in_one(tmp_path):
    with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY is the built-in default"):
        check_secrets(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/prod.db"))


def test_the_built_in_sqlite_file_runs_with_no_settings():
    check_secrets(Settings(_env_file=None))  # the demo's set-up: nothing to configure
    check_secrets(Settings(_env_file=None, database_url="sqlite:///var/digest.db"))


def test_a_random_key_of_32_characters_is_accepted_with_postgresql():
    check_secrets(Settings(_env_file=None, database_url=PG, secret_key=GOOD_KEY))


def test_create_app_from_the_environment_refuses_the_built_in_key(monkeypatch):
    from digest.settings import reset_settings_cache
    from digest.web import create_app

    for key in list(os.environ):
        if key.upper().startswith("DIGEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DIGEST_DATABASE_URL", PG)
    reset_settings_cache()
    try:
        with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY"):
            create_app()
    finally:
        reset_settings_cache()
