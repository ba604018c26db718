"""Fetching feeds over HTTP from a local server: the size cap and the error messages."""

from __future__ import annotations

import pytest

from digest.errors import IngestError
from digest.ingest import (
    fetch,
    ingest_feed,
)
from digest.settings import Settings
from tests.conftest import TEST_DATA

DATA = TEST_DATA


# --- fetching over real HTTP ------------------------------------------------------------------


def test_fetch_reads_a_feed_over_http(feed_server):
    assert fetch(f"{feed_server}/feed.xml") == (TEST_DATA / "ingest-feed.rss").read_bytes()


def test_fetch_refuses_a_body_over_the_declared_size_cap(feed_server):
    with pytest.raises(IngestError, match="50000000 bytes, over the 1000000-byte limit"):
        fetch(f"{feed_server}/declared-big", max_bytes=1_000_000)


def test_fetch_stops_reading_a_stream_past_the_size_cap(feed_server):
    with pytest.raises(IngestError, match="more than the 100000-byte limit"):
        fetch(f"{feed_server}/endless", max_bytes=100_000)


def test_fetch_errors_name_the_url_and_the_cause(feed_server):
    with pytest.raises(IngestError, match=r"/missing failed: HTTP 404"):
        fetch(f"{feed_server}/missing")
    with pytest.raises(IngestError, match="Timeout"):
        fetch(f"{feed_server}/slow", timeout=0.3)
    with pytest.raises(IngestError, match="only http:// and https://"):
        fetch("file:///etc/passwd")
    with pytest.raises(IngestError, match="only http:// and https://"):
        ingest_feed("ftp://127.0.0.1/feed.xml", settings=Settings(_env_file=None))
    closed_port = feed_server.rsplit(":", 1)[0] + ":1"
    with pytest.raises(IngestError, match="ConnectError"):
        fetch(f"{closed_port}/feed.xml", timeout=2)
