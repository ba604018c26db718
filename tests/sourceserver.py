"""A newsroom of the tests' own on 127.0.0.1 (a real threaded HTTP server, ephemeral port) that
the source-polling tests fetch: it counts requests, keeps the headers each came with, and
answers the ways a real server does.

Routes (``server.url(path)``):

- any path given a document with ``server.serve(path, body, ...)``: 200 with an ETag and a
  Last-Modified, or 304 when the request's If-None-Match / If-Modified-Since match them;
- ``/status/<code>``: that status (429, 500, 503 ...), with ``Retry-After: <after>`` when
  asked as ``/status/429?after=120`` (a number, or ``date`` for an HTTP-date 120 s ahead);
- ``/redirect/<code>?to=<path or URL>``: a 301, 302, 307 or 308 to it;
- ``/loop/a`` and ``/loop/b``: redirect to each other for ever;
- ``/huge``: 50 MB streamed with no Content-Length, and ``/huge-declared`` declaring it.

Use it as a context manager, or through ``with SourceServer() as server``.
"""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs, urlsplit

HUGE_BYTES = 50 * 1024 * 1024


@dataclass
class Document:
    body: bytes
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: str | None = '"v1"'
    last_modified: str | None = "Thu, 09 Oct 2025 10:00:00 GMT"
    headers: dict[str, str] = field(default_factory=dict)


def rss(*items: tuple[str, str], title: str = "Test newsroom", links: str = "") -> bytes:
    """An RSS 2.0 feed of ``(guid, title)`` items, dated 9 October 2025 (pass ``now`` near it);
    ``links``: extra channel elements (an ``atom:link rel="hub"``)."""
    entries = "".join(
        f"<item><title>{name}</title><link>https://newsroom.example.org/items/{guid}</link>"
        f"<guid isPermaLink=\"false\">{guid}</guid>"
        "<pubDate>Thu, 09 Oct 2025 10:30:00 GMT</pubDate>"
        f"<description>About {name}.</description></item>"
        for guid, name in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0" '
            f'xmlns:atom="http://www.w3.org/2005/Atom"><channel><title>{title}</title>'
            f"<link>https://newsroom.example.org/</link><description>Feed</description>{links}"
            f"{entries}</channel></rss>").encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.hits[parts.path] += 1
            self.server.requests.append((parts.path, dict(self.headers.items())))
        route = parts.path
        if route in self.server.documents:
            self._document(self.server.documents[route])
        elif route.startswith("/status/"):
            self._status(int(route.rsplit("/", 1)[1]), query.get("after"))
        elif route.startswith("/redirect/"):
            self._redirect(int(route.rsplit("/", 1)[1]), query.get("to", "/"))
        elif route == "/loop/a":
            self._redirect(302, "/loop/b")
        elif route == "/loop/b":
            self._redirect(302, "/loop/a")
        elif route == "/huge":
            self._huge(declared=False)
        elif route == "/huge-declared":
            self._huge(declared=True)
        else:
            self._send(404, b"not here", {"Content-Type": "text/plain"})

    def _document(self, doc: Document) -> None:
        validators = {}
        if doc.etag:
            validators["ETag"] = doc.etag
        if doc.last_modified:
            validators["Last-Modified"] = doc.last_modified
        match = self.headers.get("If-None-Match")
        since = self.headers.get("If-Modified-Since")
        if (doc.etag and match == doc.etag) or (
                match is None and doc.last_modified and since == doc.last_modified):
            self._send(304, b"", validators | doc.headers)
            return
        self._send(200, doc.body,
                   {"Content-Type": doc.content_type} | validators | doc.headers)

    def _status(self, code: int, after: str | None) -> None:
        headers = {"Content-Type": "text/plain"}
        if after == "date":
            headers["Retry-After"] = format_datetime(
                datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        elif after:
            headers["Retry-After"] = after
        self._send(code, f"status {code}".encode(), headers)

    def _redirect(self, code: int, to: str) -> None:
        self._send(code, b"", {"Location": to})

    def _huge(self, *, declared: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        if declared:
            self.send_header("Content-Length", str(HUGE_BYTES))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = b"<p>" + b"x" * 65533
        sent = 0
        try:
            while sent < HUGE_BYTES:
                self.wfile.write(chunk)
                sent += len(chunk)
                with self.server.lock:
                    self.server.huge_sent = sent
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.documents: dict[str, Document] = {}
        self.huge_sent = 0


class SourceServer:
    def __init__(self):
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SourceServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes, **options) -> Document:
        doc = Document(body, **options)
        self._server.documents[path] = doc
        return doc

    def hits(self, path: str) -> int:
        with self._server.lock:
            return self._server.hits[path]

    def requests(self, path: str) -> list[dict[str, str]]:
        with self._server.lock:
            return [headers for p, headers in self._server.requests if p == path]

    @property
    def total_hits(self) -> int:
        with self._server.lock:
            return sum(self._server.hits.values())

    @property
    def huge_sent(self) -> int:
        with self._server.lock:
            return self._server.huge_sent
