"""Fetching feeds over HTTP from a local server: the size cap and the error messages."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from digest.errors import IngestError
from digest.ingest import (
    fetch,
    ingest_feed,
)
from tests.conftest import TEST_DATA

DATA = TEST_DATA


# --- fetching over real HTTP ------------------------------------------------------------------


class _FeedHandler(http.server.BaseHTTPRequestHandler):
    feed = (DATA / "ingest-feed.rss").read_bytes()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path == "/feed.xml":
            self._send(200, self.feed)
        elif self.path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(50_000_000))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        elif self.path == "/endless":
            # No Content-Length: the size cap must stop the streamed read.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(2000):
                    self.wfile.write(b"y" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, self.feed)
        else:
            self._send(404, b"not here")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def feed_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FeedHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_reads_a_feed_over_http(feed_server):
    assert fetch(f"{feed_server}/feed.xml") == _FeedHandler.feed


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
        ingest_feed("ftp://127.0.0.1/feed.xml")
    closed_port = feed_server.rsplit(":", 1)[0] + ":1"
    with pytest.raises(IngestError, match="ConnectError"):
        fetch(f"{closed_port}/feed.xml", timeout=2)
