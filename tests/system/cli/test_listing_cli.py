"""``digest ingest listing`` as a process: the HTML page or the text form, a file or a URL,
the next pages as backfill, each damaged item a warning on stderr."""

from __future__ import annotations

import http.server
import threading

import pytest
from sqlalchemy import create_engine, select

from digest.models import Item
from tests.conftest import TEST_DATA
from tests.system.cli.test_cli import cli  # noqa: F401 - the fixture

PAGES = {
    "/newsroom": TEST_DATA / "osce-newsroom-2025-10.html",
    "/newsroom?page=1": TEST_DATA / "osce-newsroom-2025-10-page2.html",
}


class _Newsroom(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path not in PAGES:
            self.send_error(404)
            return
        body = PAGES[self.path].read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def newsroom():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Newsroom)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def backfill_flags(db_url: str) -> list[bool]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(Item.is_backfill).order_by(Item.published_at.desc())))
    finally:
        engine.dispose()


def test_a_damaged_listing_stores_its_good_items_and_warns_on_stderr(cli):  # noqa: F811
    proc = cli("ingest", "listing", str(TEST_DATA / "listing-damaged" / "cut-date.txt"))
    assert proc.returncode == 0, proc.stderr
    assert "3 new" in proc.stdout
    assert ("warning: line 20: the page ends inside the publishing date '12 October 200'"
            in proc.stderr)


def test_the_html_page_from_a_url_with_its_next_page_as_backfill(cli, newsroom):  # noqa: F811
    proc = cli("ingest", "listing", f"{newsroom}/newsroom", "--backfill-pages", "1",
               max_item_age_days="36500")
    assert proc.returncode == 0, proc.stderr
    assert "9 new" in proc.stdout and "2 backfill (not mailed)" in proc.stdout
    assert backfill_flags(cli.db_url) == [False] * 7 + [True] * 2


def test_a_negative_backfill_is_refused(cli):  # noqa: F811
    proc = cli("ingest", "listing", str(TEST_DATA / "osce-newsroom-2025-10.html"),
               "--backfill-pages", "-1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
