"""Fixtures and helpers shared by the tests of the web app (tests/test_web_*.py)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from digest import db
from digest.devtools import MailSink
from digest.settings import get_settings, reset_settings_cache
from digest.web import create_app
from digest.web.admin import hash_password
from tests.factories import Taxo

API_TOKEN = "test-api-token-0123456789"
ADMIN_PASSWORD = "correct horse battery staple"
_ADMIN_HASH = hash_password(ADMIN_PASSWORD)  # once: argon2 is slow on purpose
BASE = "https://digest.example.org"


@pytest.fixture
def web_settings(settings, smtp_sink, monkeypatch):
    """Settings for the web app on ``db_url`` (SQLite and PostgreSQL), mail to the sink."""
    monkeypatch.setenv("DIGEST_API_TOKEN", API_TOKEN)
    monkeypatch.setenv("DIGEST_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("DIGEST_ADMIN_PASSWORD_HASH", _ADMIN_HASH)
    reset_settings_cache()
    yield get_settings()
    reset_settings_cache()


@pytest.fixture
def client(web_settings):
    with TestClient(create_app(web_settings), base_url="https://testserver") as c:
        yield c


@pytest.fixture
def api(client):
    client.headers["Authorization"] = f"Bearer {API_TOKEN}"
    return client


@pytest.fixture
def db_session(web_settings):
    session = db._sessionmaker(web_settings.database_url)()
    yield session
    session.close()


@pytest.fixture
def taxo(db_session):
    t = Taxo(db_session)
    db_session.commit()
    return t


def csrf_of(html: str) -> str:
    """The CSRF token of a page's form."""
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def link_in(message, path: str) -> str:
    """The path of the first ``/path/<token>`` link in a received email's text part."""
    text = message.parsed().get_body(preferencelist=("plain",)).get_content()
    match = re.search(rf"{re.escape(BASE)}(/{path}/[A-Za-z0-9_.\-]+)", text)
    assert match, f"no /{path}/ link in:\n{text}"
    return match.group(1)


def wait_for_mail(sink: MailSink, count: int):
    return sink.wait_for(count, timeout=10)
