"""The newsroom's listing stored on SQLite + PostgreSQL: both forms store each item once, a
cut copy never replaces a complete one, a cut field creates no taxonomy, and the pages after
the first (followed over a real local HTTP server) are archive backfill, never mailed."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from digest.errors import IngestError
from digest.ingest import ItemIn, ingest_listing, parse_listing, store_items
from digest.ingest.documents import store_document
from digest.models import ContentType, Item, Source, SourceKind
from tests.conftest import SEED_LISTING, TEST_DATA

NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)
A_YEAR = 365
HTML_PAGE = TEST_DATA / "osce-newsroom-2025-10.html"
HTML_PAGE_2 = TEST_DATA / "osce-newsroom-2025-10-page2.html"
DAMAGED = TEST_DATA / "listing-damaged"


def stored(session) -> list[Item]:
    session.rollback()  # read what is committed
    return list(session.scalars(select(Item).order_by(Item.published_at.desc(), Item.id)))


class _NewsroomHandler(http.server.BaseHTTPRequestHandler):
    pages = {
        "/newsroom": (HTML_PAGE.read_bytes(), "text/html; charset=utf-8"),
        "/newsroom?page=1": (HTML_PAGE_2.read_bytes(), "text/html; charset=utf-8"),
        "/newsroom.txt": (SEED_LISTING.read_bytes(), "text/plain; charset=utf-8"),
        "/loop": (b"<html><head><link rel='next' href='/loop'></head><body><article><h3>"
                  b"<a href='/a'>Looping</a></h3><p>Publishing date: 1 October 2025</p>"
                  b"</article></body></html>", "text/html"),
    }
    requests: list[str] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.requests.append(self.path)
        body, content_type = self.pages.get(self.path, (b"not here", "text/plain"))
        self.send_response(200 if self.path in self.pages else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def newsroom():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NewsroomHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- both forms, each item once ---------------------------------------------------------------


def test_the_text_form_then_the_html_page_store_each_item_once_and_add_the_links(settings,
                                                                                 session):
    text = ingest_listing(SEED_LISTING, settings=settings, now=NOW, max_age_days=A_YEAR)
    html = ingest_listing(HTML_PAGE, settings=settings, now=NOW, max_age_days=A_YEAR)

    assert len(text.new_item_ids) == 7
    assert html.new_item_ids == [] and sorted(html.updated_item_ids) == sorted(
        text.new_item_ids)
    items = stored(session)
    assert len(items) == 7
    assert all(item.url and item.url.startswith("https://www.osce.org/") for item in items)
    assert all(item.ingested_at.replace(tzinfo=UTC) == NOW for item in items)


def test_the_html_page_then_the_text_form_store_each_item_once_and_keep_the_links(settings,
                                                                                 session):
    html = ingest_listing(HTML_PAGE, settings=settings, now=NOW, max_age_days=A_YEAR)
    text = ingest_listing(SEED_LISTING, settings=settings, now=NOW, max_age_days=A_YEAR)

    assert len(html.new_item_ids) == 7
    # The text form has no links: a copy with less, never applied over the page's.
    assert text.new_item_ids == [] and text.updated_item_ids == []
    assert text.less_complete == 7
    items = stored(session)
    assert len(items) == 7 and all(item.url for item in items)


def test_an_item_stored_under_its_link_as_guid_is_still_the_same_item(settings, session):
    first = parse_listing(SEED_LISTING.read_text(encoding="utf-8"))[0]
    link = "https://www.osce.org/mission-to-montenegro/599712"
    store_items(session, [ItemIn(guid=link, url=link, title=first.title, summary=first.summary,
                                 published_at=first.published_at)],
                source="before", now=NOW, max_age_days=A_YEAR)
    session.commit()

    report = ingest_listing(HTML_PAGE, settings=settings, now=NOW, max_age_days=A_YEAR)

    assert len(report.new_item_ids) == 6 and len(report.updated_item_ids) == 1
    assert len(stored(session)) == 7
    kept = session.scalar(select(Item).where(Item.url == link))
    assert kept.guid == link and kept.content_type.name == "News"


# --- defensive ----------------------------------------------------------------------------


def test_a_page_cut_inside_its_last_date_stores_every_good_item_and_says_which_it_left(
        settings, session):
    report = ingest_listing(DAMAGED / "cut-date.txt", settings=settings, now=NOW,
                            max_age_days=A_YEAR)
    assert len(report.new_item_ids) == 3
    assert report.rejected == [
        "line 20: the page ends inside the publishing date '12 October 200'; item "
        "'OSCE Mission Donates Defibrillators to Kosovo Police to Improve Emergency Respon' "
        "left out"
    ]
    assert "1 rejected (line 20: the page ends inside" in report.summary()


def test_a_trailing_title_is_not_stored_in_the_summary_before_it(settings, session):
    ingest_listing(DAMAGED / "trailing-title.txt", settings=settings, now=NOW,
                   max_age_days=A_YEAR)
    items = stored(session)
    assert len(items) == 3
    assert not any("Defibrillators" in item.summary for item in items)


def test_a_cut_field_line_creates_no_taxonomy(settings, session):
    report = ingest_listing(DAMAGED / "cut-field.txt", settings=settings, now=NOW,
                            max_age_days=A_YEAR)
    assert len(report.new_item_ids) == 4
    assert report.created["content_type"] == ["News"]
    session.rollback()
    assert list(session.scalars(select(ContentType.name))) == ["News"]
    statement = session.scalar(select(Item).where(Item.title.like("Statement%")))
    assert statement.content_type is None
    assert [loc.name for loc in statement.locations] == ["OSCE Chairpersonship"]


def test_a_cut_copy_later_in_the_same_page_never_replaces_the_complete_one(settings, session):
    report = ingest_listing(DAMAGED / "repeated-cut.txt", settings=settings, now=NOW,
                            max_age_days=A_YEAR)
    assert len(report.new_item_ids) == 3 and report.less_complete == 1
    assert "1 less complete copy ignored" in report.summary()
    assert_the_forensic_conference_is_complete(session)


def test_a_cut_copy_read_later_never_replaces_the_stored_complete_one(settings, session):
    ingest_listing(SEED_LISTING, settings=settings, now=NOW, max_age_days=A_YEAR)
    cut = parse_listing((DAMAGED / "repeated-cut.txt").read_text(encoding="utf-8"))[-1]
    report = store_items(session, [cut], source="t", now=NOW, max_age_days=A_YEAR,
                         keep_complete=True)
    session.commit()
    assert report.updated_item_ids == [] and report.less_complete == 1
    assert_the_forensic_conference_is_complete(session)


def test_a_more_complete_copy_read_later_replaces_the_cut_one(settings, session):
    cut = parse_listing((DAMAGED / "repeated-cut.txt").read_text(encoding="utf-8"))[-1]
    store_items(session, [cut], source="t", now=NOW, max_age_days=A_YEAR)
    session.commit()
    report = ingest_listing(SEED_LISTING, settings=settings, now=NOW, max_age_days=A_YEAR)
    assert len(report.updated_item_ids) == 1
    assert_the_forensic_conference_is_complete(session)


def assert_the_forensic_conference_is_complete(session) -> None:
    session.rollback()
    item = session.scalar(select(Item).where(Item.title.like("Jubilee%")))
    assert item.summary.endswith("Address Transnational Organized Crime.”")
    assert item.content_type.name == "News"
    assert [loc.name for loc in item.locations] == ["OSCE Mission to Montenegro"]
    assert session.scalar(select(func.count()).select_from(Item)
                          .where(Item.title.like("Jubilee%"))) == 1


def test_a_listing_where_no_item_can_be_read_writes_nothing(settings, session, tmp_path):
    page = tmp_path / "bad.txt"
    page.write_text("Header\nTitle\nPublishing date: 31 Foo 2025\n", encoding="utf-8")
    with pytest.raises(IngestError, match="no item of the listing could be read: line 3"):
        ingest_listing(page, settings=settings, now=NOW)
    assert stored(session) == []


# --- pagination over HTTP ---------------------------------------------------------------------


def test_the_next_pages_are_followed_up_to_the_limit_and_stored_as_backfill(settings, session,
                                                                             newsroom):
    report = ingest_listing(f"{newsroom}/newsroom", settings=settings, now=NOW,
                            max_age_days=A_YEAR, backfill_pages=3)

    assert len(report.new_item_ids) == 9 and len(report.backfill_ids) == 2
    items = stored(session)
    backfill = [item for item in items if item.is_backfill]
    assert [item.title[:20] for item in backfill] == ["OSCE supports region", "Moldova’s election o"]
    assert all(item.url.startswith(f"{newsroom}/") for item in items)  # resolved on the page
    assert all(item.source == f"listing:{newsroom}/newsroom" for item in items)
    assert not any(item.is_backfill for item in items if item.published_at.month == 10)


def test_without_backfill_pages_only_the_first_page_is_read(settings, session, newsroom):
    report = ingest_listing(f"{newsroom}/newsroom", settings=settings, now=NOW,
                            max_age_days=A_YEAR)
    assert len(report.new_item_ids) == 7 and report.backfill_ids == []


def test_a_pager_that_loops_back_is_read_once(settings, session, newsroom):
    _NewsroomHandler.requests.clear()
    report = ingest_listing(f"{newsroom}/loop", settings=settings, now=NOW,
                            max_age_days=A_YEAR, backfill_pages=5)
    assert len(report.new_item_ids) == 1
    assert _NewsroomHandler.requests == ["/loop"]


def test_the_text_form_is_read_from_a_url_too(settings, session, newsroom):
    report = ingest_listing(f"{newsroom}/newsroom.txt", settings=settings, now=NOW,
                            max_age_days=A_YEAR, backfill_pages=2)
    assert len(report.new_item_ids) == 7


# --- a registered source's document (the poller's path) -----------------------------------


def test_a_listing_sources_html_page_is_stored_with_its_links_and_its_source(settings, session):
    # Registered directly: add_source resolves the host, and the tests reach no network.
    source = Source(url="https://www.osce.org/newsroom", kind=SourceKind.listing)
    session.add(source)
    session.commit()
    report = store_document(session, source, HTML_PAGE.read_bytes(), "text/html; charset=utf-8",
                            settings=settings, now=NOW)
    session.commit()
    assert len(report.new_item_ids) == 7 and report.rejected == []
    items = stored(session)
    assert all(item.source_id == source.id for item in items)
    assert items[0].url == "https://www.osce.org/mission-to-montenegro/599712"


def test_items_stated_as_json_are_taken_as_given_even_when_they_drop_a_field(settings,
                                                                            session):
    """The completeness guard is for pages and feeds that may come cut short; an editor who
    sends an item without its themes through the API or as JSON means it."""
    from digest.ingest import ingest_json

    ingest_listing(SEED_LISTING, settings=settings, now=NOW, max_age_days=A_YEAR)
    item = session.scalar(select(Item).where(Item.title.like("Jubilee%")))
    assert item.themes
    edited = {"guid": item.guid, "title": item.title, "summary": "Shorter.",
              "published_at": item.published_at.isoformat(), "themes": []}
    report = ingest_json(json.dumps(edited), settings=settings, now=NOW, max_age_days=A_YEAR)
    assert report.updated_item_ids == [item.id] and report.less_complete == 0
    session.rollback()
    item = session.scalar(select(Item).where(Item.id == item.id))
    assert item.themes == [] and item.summary == "Shorter."
