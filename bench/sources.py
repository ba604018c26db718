"""What polling registered sources costs, and what conditional GET saves.

    python bench/sources.py [--sources 200] [--items 20] [--database-url URL] [--json]

Registers N sources on a local newsroom server of its own (each serving an RSS feed of M
items with an ETag and a Last-Modified), then times three polling passes with
``ingest.polling.poll_due(all_sources=True)``, each in the same run:

- first:         every feed fetched and its items stored;
- baseline:      every feed fetched again in full (the validators forgotten, as a poller
                 without conditional GET would): nothing new to store, the whole body read;
- conditional:   every feed asked with If-None-Match / If-Modified-Since: a 304 each.

It prints the requests, bytes and seconds of each pass, the conditional pass against the
baseline, and the machine's core count. SQLite in a temp dir by default; a PostgreSQL URL gets
a database of its own on that server, dropped afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import update

from bench.pipeline import bench_database
from digest import db
from digest.ingest.polling import poll_due
from digest.ingest.registry import add_source
from digest.models import Source
from digest.settings import Settings

STAMP = format_datetime(datetime(2025, 10, 9, 12, 0, tzinfo=UTC), usegmt=True)


def feed(n: int, items: int) -> bytes:
    entries = "".join(
        f"<item><title>Source {n} story {i}</title><link>https://newsroom.example.org/{n}/{i}"
        f"</link><guid>https://newsroom.example.org/{n}/{i}</guid><description>Summary of "
        f"story {i} of source {n}, long enough to look like a newsroom's.</description>"
        f"<pubDate>Thu, 09 Oct 2025 0{i % 10}:00:00 GMT</pubDate></item>"
        for i in range(items))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Source '
            f"{n}</title><link>https://newsroom.example.org/{n}</link><description>Bench"
            f"</description>{entries}</channel></rss>").encode()


class Newsroom(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, feeds: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.feeds = feeds
        self.lock = threading.Lock()
        self.requests = self.not_modified = self.bytes_sent = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Newsroom

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = self.server.feeds[self.path]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        fresh = (self.headers.get("If-None-Match") == etag
                 or self.headers.get("If-Modified-Since") == STAMP)
        with self.server.lock:
            self.server.requests += 1
            self.server.not_modified += fresh
            self.server.bytes_sent += 0 if fresh else len(body)
        self.send_response(304 if fresh else 200)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", STAMP)
        self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
        self.send_header("Content-Length", "0" if fresh else str(len(body)))
        self.end_headers()
        if not fresh:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def measure(settings: Settings, server: Newsroom, now: datetime, *,
            forget_validators: bool) -> dict:
    with db.session_scope(settings.database_url) as session:
        values: dict = {"next_poll_at": now}
        if forget_validators:
            values |= {"etag": None, "last_modified": None}
        session.execute(update(Source).values(**values))
    before = (server.requests, server.not_modified, server.bytes_sent)
    started = time.perf_counter()
    outcomes = poll_due(settings, now=now, all_sources=True)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "sources_per_second": round(len(outcomes) / seconds, 1),
        "requests": server.requests - before[0],
        "not_modified": server.not_modified - before[1],
        "bytes": server.bytes_sent - before[2],
        "new_items": sum(o.new_items for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    feeds = {f"/feed/{n}.xml": feed(n, args.items) for n in range(args.sources)}
    server = Newsroom(feeds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp, bench_database(args.database_url,
                                                               Path(tmp)) as url:
        settings = Settings(database_url=url, sources_allow_private=True, broker_url=None,
                            max_item_age_days=3650)
        db.upgrade(url)
        now = datetime(2025, 10, 10, 12, 0, tzinfo=UTC)
        with db.session_scope(url) as session:
            for path in feeds:
                add_source(session, f"http://127.0.0.1:{server.server_address[1]}{path}",
                           settings=settings, every="15m", now=now)
        passes = {
            "first": measure(settings, server, now, forget_validators=False),
            "baseline": measure(settings, server, now + timedelta(hours=1),
                                forget_validators=True),
            "conditional": measure(settings, server, now + timedelta(hours=2),
                                   forget_validators=False),
        }
    server.shutdown()
    base, cond = passes["baseline"], passes["conditional"]
    report = {
        "cores": os.cpu_count(), "sources": args.sources, "items_per_feed": args.items,
        "database": "postgresql" if (args.database_url or "").startswith("postgresql")
        else "sqlite", "passes": passes,
        "conditional_vs_baseline": {
            "seconds": round(cond["seconds"] / base["seconds"], 2),
            "bytes": round(cond["bytes"] / base["bytes"], 4) if base["bytes"] else None,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.sources} sources x {args.items} items, {os.cpu_count()} cores, "
          f"{report['database']}")
    print(f"{'pass':<12} {'seconds':>8} {'src/s':>7} {'requests':>9} {'304':>5} "
          f"{'bytes':>10} {'new items':>9}")
    for name, p in passes.items():
        print(f"{name:<12} {p['seconds']:>8} {p['sources_per_second']:>7} {p['requests']:>9} "
              f"{p['not_modified']:>5} {p['bytes']:>10} {p['new_items']:>9}")
    ratio = report["conditional_vs_baseline"]
    print(f"conditional / baseline: x{ratio['seconds']} time, x{ratio['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
