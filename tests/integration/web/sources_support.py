"""Sources in a given state for the web tests of the sources' edges (API, admin, /metrics):
built through the model, as the poller would have left them."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from digest.ingest import registry
from digest.models import Source
from digest.settings import Settings, reset_settings_cache
from tests.sourceserver import SourceServer

# A public address written as an IP literal: registering it resolves nothing.
PUBLIC_FEED = "https://93.184.215.14/news/feed.xml"
ERROR = "HTTP 503 Service Unavailable from 93.184.215.14: the server is down for maintenance"


def failing_source(session: Session, settings: Settings, *, url: str = PUBLIC_FEED,
                   failures: int = 5, since: datetime, last_success: datetime,
                   now: datetime) -> Source:
    """A source read well at ``last_success``, failing every poll since ``since`` (and
    backing off: its next poll an hour after ``now``)."""
    source = registry.add_source(session, url, settings=settings, every="15m",
                                 now=last_success - timedelta(days=1))
    source.polls = failures + 3
    source.failures = failures
    source.consecutive_failures = failures
    source.not_modified = 1
    source.items_added = 12
    source.bytes_fetched = 48_000
    source.last_success_at = last_success
    source.failing_since = since
    source.last_attempt_at = now - timedelta(minutes=5)
    source.last_status = 503
    source.last_error = ERROR
    source.next_poll_at = now + timedelta(hours=1)
    session.commit()
    return source


@pytest.fixture
def private_ok(monkeypatch):
    """Sources may be on 127.0.0.1 (the tests' own server): ask for it before the app."""
    monkeypatch.setenv("DIGEST_SOURCES_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("DIGEST_SOURCE_BACKOFF_MAX_SECONDS", "86400")
    reset_settings_cache()


@pytest.fixture
def newsroom():
    with SourceServer() as server:
        yield server
