"""Outside the built-in SQLite file, `digest web` and the Celery workers refuse to start with
the built-in, an empty or a short DIGEST_SECRET_KEY: one line naming the variable, exit 1,
no traceback. The built-in file (the demo, a first try) still needs no settings."""

from __future__ import annotations

import os

import pytest

from digest.errors import ConfigError
from digest.settings import Settings, check_secrets

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOOD_KEY = "k" * 32


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
