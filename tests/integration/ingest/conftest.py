"""A feed server on 127.0.0.1 for the ingest tests that fetch over real HTTP."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from tests.conftest import TEST_DATA


class _FeedHandler(http.server.BaseHTTPRequestHandler):
    feed = (TEST_DATA / "ingest-feed.rss").read_bytes()

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
