"""Bad-input corpus, feeds: each bad document is refused with one line that names the bad
value (encoding and byte offset, line and column, entity, size) and writes nothing; bad
entries inside a good feed are left out or cleaned while the rest is stored. Feeds fetched
over HTTP come from a real local server. On SQLite and PostgreSQL."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from digest.errors import IngestError
from digest.ingest import ingest_feed
from digest.models import Item
from tests.conftest import TEST_DATA
from tests.feeds import BIG, GOOD, NOW, decl, entry, rss

DATA = TEST_DATA






CYRILLIC = "Новости дня: выборы"
CHINESE = "中文新闻：选举观察"
LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE rss [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 2 else "") + ";") * 10}">\n'
        for n in range(2, 10)
    )
    + "]>\n" + rss(entry("&lol9;", "laugh"))
)


def titles(session) -> list[str]:
    session.rollback()  # read what is committed
    return sorted(session.scalars(select(Item.title)))


def item_count(session) -> int:
    session.rollback()
    return session.scalar(select(func.count()).select_from(Item))


# --- documents refused as a whole ------------------------------------------------------------

REFUSED = [
    pytest.param((DATA / "ingest-malformed.rss").read_bytes(),
                 ["malformed feed: line 8, column 5", "mismatched tag", "</channel>"],
                 id="xml-mismatched-tag"),
    pytest.param(rss(entry("Truncated", "t")).encode()[:-16],
                 ["malformed feed", "no element found"], id="xml-truncated"),
    pytest.param(rss(entry("Tom & Jerry", "amp")).encode(),
                 ["malformed feed: line 1", "not well-formed", "Tom & Jerry"],
                 id="xml-bare-ampersand"),
    pytest.param(rss(entry("a&nbsp;b", "nbsp")).encode(),
                 ["undefined entity", "&nbsp;"], id="xml-html-entity-without-dtd"),
    pytest.param(rss(entry("bell\x07here", "ctl")).encode(),
                 ["not well-formed", "bell"], id="xml-control-character"),
    pytest.param(rss(entry("nul\x00here", "nul")).encode(),
                 ["not well-formed", "nul"], id="xml-nul-byte"),
    pytest.param((rss(entry("One", "1")) + "<rss/>").encode(),
                 ["junk after document element"], id="xml-two-root-elements"),
    pytest.param(LAUGHS.encode(), ["entity 'lol'", "billion-laughs"], id="billion-laughs"),
    pytest.param(('<!DOCTYPE rss [<!ENTITY big "' + "x" * 100_000 + '">]>'
                  + rss(entry("&big;&big;&big;", "q"))).encode(),
                 ["entity 'big'"], id="quadratic-blowup-entity"),
    pytest.param(('<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                  + rss(entry("&xxe;", "x"))).encode(),
                 ["entity 'xxe'", "XXE"], id="external-entity-xxe"),
    pytest.param(rss(entry(CYRILLIC, "c")).encode("cp1251"),
                 ["not valid utf-8", "no encoding declared", "0xcd at byte offset 60",
                  "windows-1251"], id="undeclared-windows-1251"),
    pytest.param(rss(entry(CHINESE, "z")).encode("gbk"),
                 ["not valid utf-8", "no encoding declared", "byte offset 60"],
                 id="undeclared-gbk"),
    pytest.param(rss(entry("Café", "l"), decl=decl("utf-8")).encode("latin-1"),
                 ["not valid utf-8", "from its XML declaration", "0xe9"],
                 id="declared-utf8-but-latin1"),
    pytest.param(rss(entry("Ünï", "w"), decl=decl("utf-16")).encode("utf-8"),
                 ["XML declaration says 'utf-16'", "no byte order mark"],
                 id="declared-utf16-in-one-byte-encoding"),
    pytest.param(rss(entry("x", "k"), decl=decl("klingon-8")).encode(),
                 ["unknown character encoding 'klingon-8'", "XML declaration"],
                 id="unknown-declared-encoding"),
    pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
                 ["not valid utf-8", "0x89 at byte offset 0"], id="binary-not-text"),
    pytest.param(b"\xef\xbb\xbf" + rss(entry(CYRILLIC, "b")).encode("cp1251"),
                 ["not valid utf-8", "from its byte order mark", "byte offset 63"],
                 id="utf8-bom-over-windows-1251"),
    pytest.param(b'{"title": "JSON, not a feed"}',
                 ["malformed feed: line 1, column 1", "not well-formed", "JSON, not a feed"],
                 id="json-given-as-feed"),
]


@pytest.mark.parametrize(("document", "fragments"), REFUSED)
def test_a_bad_feed_document_is_refused_naming_the_bad_value_and_writes_nothing(
    settings, session, tmp_path, document, fragments
):
    good = tmp_path / "good.rss"
    good.write_bytes(GOOD)
    ingest_feed(good, now=NOW, settings=settings)
    bad = tmp_path / "bad.rss"
    bad.write_bytes(document)
    with pytest.raises(IngestError) as caught:
        ingest_feed(bad, now=NOW, settings=settings)
    message = str(caught.value)
    assert "\n" not in message  # one line for the CLI's "error: ..."
    for fragment in fragments:
        assert fragment in message, message
    assert titles(session) == ["Already stored"]


# --- entries: the bad ones left out or cleaned, the rest kept ----------------------------------

ENTRIES = [
    pytest.param(entry("", "no-title"), None, "entry 2 ('no-title'): no title", id="no-title"),
    pytest.param(entry("<![CDATA[<script>alert(1)</script>]]>", "only-script"), None,
                 "raw title '<script>alert(1)</script>'", id="title-only-a-script"),
    pytest.param("<guid>bare</guid><description>text only</description>", None,
                 "entry 2 ('bare'): no title", id="no-title-element"),
    pytest.param(entry("<![CDATA[<b>Bold</b><script>steal()</script> news]]>", "s1"),
                 ("Bold news", ""), None, id="script-in-title"),
    pytest.param(entry("Summary", "s2", "<description><![CDATA[<img src=x onerror=alert(1)>"
                       "<p>Text</p><script>x()</script>]]></description>"),
                 ("Summary", "Text"), None, id="script-and-onerror-in-summary"),
    pytest.param(entry("Date garbage", "d1", "<pubDate>yesterday-ish</pubDate>"),
                 ("Date garbage", ""), None, id="unparseable-date"),
    pytest.param(entry("Year 9999", "d2", "<pubDate>Fri, 31 Dec 9999 23:59:59 +0000</pubDate>"),
                 ("Year 9999", ""), None, id="date-in-year-9999"),
    pytest.param(entry("No date", "d3"), ("No date", ""), None, id="missing-date"),
    pytest.param(entry("JS link", "j1", "<link>javascript:alert(1)</link>"),
                 ("JS link", ""), None, id="javascript-link"),
]


@pytest.mark.parametrize(("bad_entry", "stored", "rejected"), ENTRIES)
def test_a_bad_entry_is_left_out_or_cleaned_and_the_rest_of_the_feed_is_stored(
    settings, session, tmp_path, bad_entry, stored, rejected
):
    path = tmp_path / "mixed.rss"
    good = entry("Good item", "good", "<pubDate>Thu, 09 Oct 2025 08:00:00 +0000</pubDate>")
    path.write_text(rss(good, bad_entry), encoding="utf-8")
    report = ingest_feed(path, now=NOW, settings=settings)
    session.rollback()
    rows = {i.title: i for i in session.scalars(select(Item))}
    assert rows["Good item"].published_at.replace(tzinfo=UTC) == datetime(
        2025, 10, 9, 8, 0, tzinfo=UTC
    )
    if rejected:
        assert len(rows) == 1 and len(report.rejected) == 1
        assert rejected in report.rejected[0] and rejected in report.summary()
    else:
        title, summary = stored
        assert report.rejected == [] and set(rows) == {"Good item", title}
        kept = rows[title]
        assert kept.summary == summary and kept.published_at is None and kept.url is None
        assert "<" not in kept.title + kept.summary and "alert" not in kept.summary


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


JAPANESE = "選挙監視団の報告"
STORED = [
    pytest.param(rss(entry(CHINESE, "gbk")).encode("gbk"),
                 "application/rss+xml; charset=gbk", CHINESE, id="gbk-by-http-charset"),
    pytest.param(rss(entry(CHINESE, "gb2312"), decl=decl("gb2312")).encode("gbk"),
                 "application/rss+xml", CHINESE, id="gb2312-declared-read-as-gbk"),
    pytest.param(rss(entry(CYRILLIC, "1251"), decl=decl("windows-1251")).encode("cp1251"),
                 "application/rss+xml", CYRILLIC, id="windows-1251-by-xml-declaration"),
    pytest.param(rss(entry(CYRILLIC, "koi8"), decl=decl("utf-8")).encode("koi8-r"),
                 'text/xml; charset="KOI8-R"', CYRILLIC, id="http-charset-wins-over-declaration"),
    pytest.param(rss(entry(JAPANESE, "sjis"), decl=decl("Shift_JIS")).encode("shift_jis"),
                 "application/xml", JAPANESE, id="shift-jis-by-xml-declaration"),
    pytest.param(rss(entry(CYRILLIC, "u16")).encode("utf-16"), "application/xml", CYRILLIC,
                 id="utf-16-with-bom"),
    pytest.param(b"\xef\xbb\xbf" + rss(entry(CHINESE, "u8bom"), decl=decl("gbk")).encode(),
                 "application/xml", CHINESE, id="utf-8-bom-wins-over-declaration"),
]


@pytest.mark.parametrize(("body", "content_type", "title"), STORED)
def test_a_feed_in_a_declared_encoding_is_stored_in_its_own_letters(
    settings, session, server, body, content_type, title
):
    ROUTES["/enc.xml"] = (body, content_type)
    report = ingest_feed(f"{server}/enc.xml", now=NOW, settings=settings)
    assert len(report.new_item_ids) == 1
    assert titles(session) == [title]


FETCH_REFUSED = [
    pytest.param(rss(entry(CYRILLIC, "c")).encode("cp1251"), "application/rss+xml",
                 ["not valid utf-8", "no encoding declared", "byte offset 60"],
                 id="http-windows-1251-without-charset-or-declaration"),
    pytest.param(rss(entry(CYRILLIC, "c"), decl=decl("windows-1251")).encode("cp1251"),
                 "text/xml; charset=utf-8",
                 ["not valid utf-8", "from the HTTP Content-Type charset"],
                 id="http-charset-utf8-but-windows-1251"),
    pytest.param(GOOD, "application/rss+xml; charset=x-martian",
                 ["unknown character encoding 'x-martian'", "HTTP Content-Type charset"],
                 id="http-unknown-charset"),
]


@pytest.mark.parametrize(("body", "content_type", "fragments"), FETCH_REFUSED)
def test_a_fetched_feed_that_does_not_decode_is_refused_not_stored_garbled(
    settings, session, server, body, content_type, fragments
):
    ROUTES["/bad-enc.xml"] = (body, content_type)
    with pytest.raises(IngestError) as caught:
        ingest_feed(f"{server}/bad-enc.xml", now=NOW, settings=settings)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert item_count(session) == 0


@pytest.fixture(scope="module")
def fifty_megabytes() -> bytes:
    # A feed-shaped 50 MB body, made at test time (never committed).
    head = rss(entry("Huge", "huge")).encode()
    return head[:-len(b"</channel></rss>")] + b" " * (BIG - len(head)) + b"</channel></rss>"


@pytest.mark.parametrize("path", ["/big.xml", "/stream-big.xml"],
                         ids=["50mb-body-with-content-length", "50mb-body-streamed"])
def test_a_50_mb_feed_over_http_is_refused_by_the_size_cap(
    sqlite_settings, server, fifty_megabytes, path
):
    ROUTES[path] = (fifty_megabytes, "application/rss+xml")
    with pytest.raises(IngestError, match=r"5242880-byte limit") as caught:
        ingest_feed(f"{server}{path}", now=NOW, settings=sqlite_settings)
    assert path in str(caught.value)
