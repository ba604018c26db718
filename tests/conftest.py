"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, the local SMTP server.

PostgreSQL: each test session creates its own database on the server named by
``DIGEST_TEST_PG_URL`` (default: the local server, trust auth) and drops it at the end, so
parallel sessions never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from digest import db as digest_db
from digest.models import Base
from digest.settings import get_settings, reset_settings_cache

PG_ADMIN_URL = os.environ.get(
    "DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DIGEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SEED_LISTING = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "osce-newsroom-2025-10.txt"


@pytest.fixture(scope="session")
def pg_database_url():
    """A fresh PostgreSQL database at the latest migration, dropped after the session."""
    name = f"digest_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    digest_db.upgrade(url)
    yield url
    digest_db.engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite file at the latest migration, copied for every test that wants one."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    digest_db.upgrade(f"sqlite:///{path}")
    digest_db.engine_for(f"sqlite:///{path}").dispose()
    return path


def _truncate_pg(url: str) -> None:
    engine = digest_db.engine_for(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty, migrated database: every test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "digest.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        yield url
        digest_db.engine_for(url).dispose()
    else:
        url = request.getfixturevalue("pg_database_url")
        _truncate_pg(url)
        yield url


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template):
    """An empty, migrated SQLite database, for tests that need one backend only."""
    path = tmp_path / "digest.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    yield url
    digest_db.engine_for(url).dispose()


@pytest.fixture
def pg_url(pg_database_url):
    _truncate_pg(pg_database_url)
    return pg_database_url


def _apply_settings(monkeypatch, tmp_path, url: str, **extra: str):
    monkeypatch.setenv("DIGEST_DATABASE_URL", url)
    monkeypatch.setenv("DIGEST_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DIGEST_BROKER_URL", "")
    monkeypatch.setenv("DIGEST_SECRET_KEY", "test-secret")
    monkeypatch.setenv("DIGEST_PUBLIC_BASE_URL", "https://digest.example.org")
    for key, value in extra.items():
        monkeypatch.setenv(f"DIGEST_{key.upper()}", value)
    reset_settings_cache()
    return get_settings()


@pytest.fixture
def settings(db_url, tmp_path, monkeypatch):
    """Settings pointing at ``db_url`` (SQLite and PostgreSQL), in-process tasks."""
    yield _apply_settings(monkeypatch, tmp_path, db_url)
    reset_settings_cache()


@pytest.fixture
def sqlite_settings(sqlite_url, tmp_path, monkeypatch):
    yield _apply_settings(monkeypatch, tmp_path, sqlite_url)
    reset_settings_cache()


@pytest.fixture
def session(settings):
    """A session on the test database (the caller commits)."""
    s = digest_db._sessionmaker(settings.database_url)()
    yield s
    s.close()


# --- smtp_sink: a real local SMTP server (aiosmtpd) ----------------------------------


@pytest.fixture
def smtp_sink(tmp_path, monkeypatch, request):
    """A running MailSink (outbox ``tmp_path/"outbox"``) that DIGEST_SMTP_* point at.

    Works whichever order it is requested in: env is set and the settings cache reset
    here, and a ``settings``/``sqlite_settings`` object already created for this test is
    updated too.
    """
    from digest.mailsink import MailSink

    earlier = [
        request.getfixturevalue(name)
        for name in ("settings", "sqlite_settings")
        if name in request.fixturenames
    ]
    sink = MailSink(outbox=tmp_path / "outbox").start()
    monkeypatch.setenv("DIGEST_SMTP_HOST", sink.host)
    monkeypatch.setenv("DIGEST_SMTP_PORT", str(sink.port))
    reset_settings_cache()
    for obj in earlier:
        monkeypatch.setattr(obj, "smtp_host", sink.host)
        monkeypatch.setattr(obj, "smtp_port", sink.port)
    yield sink
    sink.stop()
    reset_settings_cache()
