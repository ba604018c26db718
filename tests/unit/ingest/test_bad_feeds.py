"""Bad-input corpus, feeds without a database: a huge feed file is refused before it is read."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime

import pytest

from digest.errors import IngestError
from digest.ingest import MAX_FILE_BYTES, ingest_feed

NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)
BIG = 50 * 1024 * 1024


def rss(*items: str, decl: str = "") -> str:
    body = "".join(f"<item>{item}</item>" for item in items)
    return f"{decl}<rss version=\"2.0\"><channel><title>Feed</title>{body}</channel></rss>"


def entry(title: str, guid: str, extra: str = "") -> str:
    return f"<title>{title}</title><guid>{guid}</guid>{extra}"


def decl(encoding: str) -> str:
    return f'<?xml version="1.0" encoding="{encoding}"?>\n'


GOOD = rss(entry("Already stored", "good-1")).encode()


# --- encodings and size over real HTTP ------------------------------------------------------------

ROUTES: dict[str, tuple[bytes, str]] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body, content_type = ROUTES.get(self.path, (b"not here", "text/plain"))
        chunked = self.path.startswith("/stream")
        self.send_response(200 if self.path in ROUTES else 404)
        self.send_header("Content-Type", content_type)
        if chunked:  # no Content-Length: only the streamed size cap can stop it
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for start in range(0, len(body), 1 << 20):
                self.wfile.write(body[start:start + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_50_mb_feed_file_is_refused_before_it_is_read(sqlite_settings, tmp_path):
    path = tmp_path / "huge.rss"
    with path.open("wb") as f:  # sparse: 50 MB by size, nothing much on disk
        f.write(GOOD)
        f.truncate(BIG)
    with pytest.raises(IngestError) as caught:
        ingest_feed(path, now=NOW)
    assert str(caught.value) == (
        f"cannot read {path}: it is {BIG} bytes, over the {MAX_FILE_BYTES}-byte limit; "
        "split it into smaller files"
    )
