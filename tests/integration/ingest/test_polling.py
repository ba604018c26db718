"""Polling registered sources over real HTTP (tests/sourceserver.py) into SQLite and
PostgreSQL: conditional GET, Retry-After, back-off, redirects, the guard, the size cap, two
pollers at once. The clock is injected (``now=``); nothing sleeps."""

from __future__ import annotations

import importlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from digest import db as digest_db
from digest.errors import IngestError
from digest.ingest import guard, registry
from digest.ingest.polling import poll_due
from digest.models import Item, Source
from digest.settings import get_settings, reset_settings_cache
from tests.sourceserver import HUGE_BYTES, SourceServer, rss

NOW = datetime(2025, 10, 10, 12, 0, tzinfo=UTC)
# The module, not the ``fetch`` function ``digest.ingest`` exports under the same name.
fetch_module = importlib.import_module("digest.ingest.fetch")
FEED = rss(("a-1", "First story"), ("a-2", "Second story"))


@pytest.fixture
def server():
    with SourceServer() as s:
        yield s


@pytest.fixture
def polling(settings, monkeypatch):
    """Settings that may reach the tests' own server on 127.0.0.1."""
    monkeypatch.setenv("DIGEST_SOURCES_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("DIGEST_SOURCE_BACKOFF_MAX_SECONDS", "600")
    reset_settings_cache()
    return get_settings()


def add(settings, url: str, **options) -> int:
    with digest_db.session_scope(settings.database_url) as session:
        return registry.add_source(session, url, settings=settings, now=NOW, **options).id


def source(settings, source_id: int) -> Source:
    with digest_db.session_scope(settings.database_url) as session:
        return session.get_one(Source, source_id)


def items(settings) -> int:
    with digest_db.session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Item)) or 0


class RecordingQueue:
    """Records announced ids and whether each was already committed (seen by a new session)."""
    def __init__(self, settings):
        self.settings = settings
        self.announced: list[int] = []
        self.visible: list[bool] = []

    def publish_items(self, ids):
        self.announced += list(ids)
        with digest_db.session_scope(self.settings.database_url) as session:
            found = session.scalar(select(func.count()).select_from(Item)
                                   .where(Item.id.in_(list(ids))))
        self.visible.append(found == len(ids))


def test_a_new_source_is_stored_then_a_304_costs_one_request_and_stores_nothing(polling, server):
    server.serve("/feed.xml", FEED)
    sid = add(polling, server.url("/feed.xml"))
    queue = RecordingQueue(polling)

    [first] = poll_due(polling, now=NOW, queue=queue)
    assert (first.status, first.new_items) == ("stored", 2)
    assert len(queue.announced) == 2 and queue.visible == [True]
    stored = source(polling, sid)
    assert stored.etag == '"v1"' and stored.last_modified and stored.items_added == 2
    assert stored.bytes_fetched == len(FEED) and stored.last_success_at == NOW

    later = stored.next_poll_at + timedelta(seconds=1)
    [second] = poll_due(polling, now=later, queue=queue)
    assert second.status == "not_modified" and second.new_items == 0
    assert server.hits("/feed.xml") == 2  # one round trip each
    sent = server.requests("/feed.xml")[-1]
    assert sent["If-None-Match"] == '"v1"' and "If-Modified-Since" in sent
    assert "Digest" in sent["User-Agent"]
    after = source(polling, sid)
    assert (after.not_modified, after.items_added, after.polls) == (1, 2, 2)
    assert items(polling) == 2 and len(queue.announced) == 2


def test_a_server_sending_only_last_modified_gets_if_modified_since(polling, server):
    server.serve("/feed.xml", FEED, etag=None)
    sid = add(polling, server.url("/feed.xml"))
    poll_due(polling, now=NOW)
    [again] = poll_due(polling, now=NOW, all_sources=True)
    sent = server.requests("/feed.xml")[-1]
    assert again.status == "not_modified" and "If-None-Match" not in sent
    assert sent["If-Modified-Since"] == source(polling, sid).last_modified


def test_a_source_not_due_is_not_polled_and_all_polls_it_anyway(polling, server):
    server.serve("/feed.xml", FEED)
    add(polling, server.url("/feed.xml"))
    poll_due(polling, now=NOW)
    assert poll_due(polling, now=NOW + timedelta(minutes=5)) == []
    [again] = poll_due(polling, now=NOW + timedelta(minutes=5), all_sources=True)
    assert again.status == "not_modified" and server.hits("/feed.xml") == 2


def test_the_next_poll_is_the_interval_plus_jitter_or_max_age_when_longer(polling, server):
    server.serve("/feed.xml", FEED)
    server.serve("/cached.xml", FEED, headers={"Cache-Control": "public, max-age=7200"})
    plain = add(polling, server.url("/feed.xml"), every="15m")
    cached = add(polling, server.url("/cached.xml"), every="1m")
    poll_due(polling, now=NOW)
    wait = (source(polling, plain).next_poll_at - NOW).total_seconds()
    assert 900 <= wait <= 990
    wait = (source(polling, cached).next_poll_at - NOW).total_seconds()
    assert 7200 <= wait <= 7920


@pytest.mark.parametrize("after", ["120", "date"])
def test_a_429_with_retry_after_is_not_polled_again_for_that_long(polling, server, after):
    sid = add(polling, server.url(f"/status/429?after={after}"), every="1m")
    [outcome] = poll_due(polling, now=datetime.now(UTC))
    assert outcome.status == "failed" and "HTTP 429" in outcome.error
    at = source(polling, sid)
    assert "Retry-After" in at.last_error and at.last_status == 429
    wait = (at.next_poll_at - at.last_attempt_at).total_seconds()
    assert 118 <= wait <= 133
    assert poll_due(polling, now=at.last_attempt_at + timedelta(seconds=117)) == []
    assert server.hits("/status/429") == 1
    assert len(poll_due(polling, now=at.next_poll_at)) == 1
    assert server.hits("/status/429") == 2


def test_a_503_retry_after_is_a_floor_over_the_back_off(polling, server):
    sid = add(polling, server.url("/status/503?after=500"), every="1m")
    poll_due(polling, now=NOW)
    at = source(polling, sid)
    assert at.last_status == 503 and "service unavailable" in at.last_error
    assert 500 <= (at.next_poll_at - NOW).total_seconds() <= 550


def test_a_source_failing_five_times_backs_off_up_to_the_cap_and_keeps_its_error(polling,
                                                                                   server):
    sid = add(polling, server.url("/status/500"), every="1m")
    now, waits = NOW, []
    for _ in range(5):
        [outcome] = poll_due(polling, now=now)
        assert outcome.status == "failed"
        nxt = source(polling, sid).next_poll_at
        waits.append((nxt - now).total_seconds())
        now = nxt
    for wait, base in zip(waits, [60, 120, 240, 480, 600], strict=True):  # cap: 600 s
        assert base <= wait <= base * 1.1
    failing = source(polling, sid)
    assert failing.consecutive_failures == 5 and failing.failures == 5
    assert "HTTP 500" in failing.last_error and failing.failing_since == NOW
    assert registry.health(failing, now=now, stale_hours=24) == "failing"
    assert registry.health(failing, now=NOW + timedelta(hours=25), stale_hours=24) == "stale"


def test_a_success_clears_the_failure_record(polling, server):
    server.serve("/feed.xml", FEED)
    sid = add(polling, server.url("/status/500"), every="1m")
    poll_due(polling, now=NOW)
    with digest_db.session_scope(polling.database_url) as session:
        session.get_one(Source, sid).url = server.url("/feed.xml")
    poll_due(polling, now=NOW + timedelta(hours=1))
    healed = source(polling, sid)
    assert healed.consecutive_failures == 0 and healed.last_error is None
    assert healed.failing_since is None and healed.failures == 1


def test_one_failing_source_does_not_stop_the_others(polling, server):
    server.serve("/feed.xml", FEED)
    add(polling, server.url("/status/500"))
    add(polling, server.url("/loop/a"))
    add(polling, server.url("/feed.xml"))
    server.serve("/broken.json", b"\xff\xfe not json", content_type="application/json")
    add(polling, server.url("/broken.json"), kind="json")
    outcomes = {o.url.rsplit("/", 1)[-1]: o for o in poll_due(polling, now=NOW)}
    assert outcomes["feed.xml"].status == "stored" and items(polling) == 2
    assert outcomes["500"].status == outcomes["a"].status == "failed"
    assert outcomes["broken.json"].status == "failed" and outcomes["broken.json"].error


@pytest.mark.parametrize("code,moves", [(301, True), (308, True), (302, False), (307, False)])
def test_a_permanent_redirect_updates_the_url_and_a_temporary_one_does_not(polling, server,
                                                                            code, moves):
    server.serve("/new.xml", FEED)
    old = server.url(f"/redirect/{code}?to=/new.xml")
    sid = add(polling, old)
    [outcome] = poll_due(polling, now=NOW)
    assert outcome.status == "stored" and outcome.new_items == 2
    assert source(polling, sid).url == (server.url("/new.xml") if moves else old)


def test_a_redirect_loop_is_a_clear_error(polling, server):
    sid = add(polling, server.url("/loop/a"))
    [outcome] = poll_due(polling, now=NOW)
    assert outcome.status == "failed" and "redirect loop" in outcome.error
    assert "redirect loop" in source(polling, sid).last_error
    assert server.hits("/loop/a") == 1 and server.hits("/loop/b") == 1


def test_more_than_five_redirects_are_refused(server):
    chain = "/feed.xml"
    server.serve("/feed.xml", FEED)
    for _ in range(6):
        chain = f"/redirect/302?to={quote(chain, safe='')}"
    with pytest.raises(IngestError, match="too many redirects"):
        fetch_module.fetch_source(server.url(chain), allow_private=True)


def test_a_private_source_url_is_refused_at_registration_and_at_poll_time(settings, server,
                                                                         monkeypatch):
    server.serve("/feed.xml", FEED)
    with (pytest.raises(IngestError, match="DIGEST_SOURCES_ALLOW_PRIVATE"),
          digest_db.session_scope(settings.database_url) as session):
        registry.add_source(session, server.url("/feed.xml"), settings=settings)
    # Registered while allowed, then the setting turned off: the poll refuses it, no request.
    monkeypatch.setenv("DIGEST_SOURCES_ALLOW_PRIVATE", "true")
    reset_settings_cache()
    sid = add(get_settings(), server.url("/feed.xml"))
    monkeypatch.setenv("DIGEST_SOURCES_ALLOW_PRIVATE", "false")
    reset_settings_cache()
    [outcome] = poll_due(get_settings(), now=NOW)
    assert outcome.status == "failed" and "127.0.0.1" in outcome.error
    assert "private or loopback" in source(settings, sid).last_error
    assert server.total_hits == 0


def test_every_redirect_hop_is_checked_by_the_guard(polling, server, monkeypatch):
    """The first address (127.0.0.1) let through as if public; its redirect to localhost is
    checked again, with private addresses refused, and not followed."""
    real = guard.check_public

    def first_hop_public(url, *, allow_private):
        real(url, allow_private=url.startswith(server.base))

    monkeypatch.setattr(fetch_module, "check_public", first_hop_public)
    server.serve("/feed.xml", FEED)
    port = server.base.rsplit(":", 1)[1]
    target = f"http://localhost:{port}/feed.xml"
    sid = add(polling, server.url(f"/redirect/302?to={target}"))
    [outcome] = poll_due(polling, now=NOW)
    assert outcome.status == "failed" and "refused to fetch http://localhost" in outcome.error
    assert server.hits("/feed.xml") == 0 and source(polling, sid).last_error


@pytest.mark.parametrize("path", ["/huge", "/huge-declared"])
def test_a_50_mb_page_is_refused_after_reading_at_most_the_limit(polling, server, path):
    sid = add(polling, server.url(path), kind="listing")
    [outcome] = poll_due(polling, now=NOW)
    assert outcome.status == "failed" and "DIGEST_SOURCE_MAX_BYTES" in outcome.error
    assert polling.source_max_bytes == 5 * 1024 * 1024
    assert server.huge_sent < HUGE_BYTES // 2  # the reader stopped; the server saw it go
    refused = source(polling, sid)
    assert refused.bytes_fetched == 0 and items(polling) == 0


def test_a_feed_naming_a_hub_records_the_hub_and_topic(polling, server):
    topic = "https://newsroom.example.org/feed.xml"
    links = (f'<atom:link rel="hub" href="https://hub.example.org/"/>'
             f'<atom:link rel="self" href="{topic}"/>')
    server.serve("/feed.xml", rss(("h-1", "Hubbed"), links=links))
    sid = add(polling, server.url("/feed.xml"))
    poll_due(polling, now=NOW)
    found = source(polling, sid)
    assert (found.hub_url, found.topic_url) == ("https://hub.example.org/", topic)


def test_a_source_gives_its_defaults_to_items_that_carry_none(polling, server):
    server.serve("/feed.xml", FEED)
    add(polling, server.url("/feed.xml"), language="fr", location="Vienna")
    poll_due(polling, now=NOW)
    with digest_db.session_scope(polling.database_url) as session:
        stored = list(session.scalars(select(Item)))
    assert {item.language for item in stored} == {"fr"}
    assert all(item.source_id is not None for item in stored)


def test_a_paused_source_is_not_polled_and_asking_for_it_says_skipped(polling, server):
    server.serve("/feed.xml", FEED)
    sid = add(polling, server.url("/feed.xml"))
    with digest_db.session_scope(polling.database_url) as session:
        registry.set_paused(session, sid, True)
    assert poll_due(polling, now=NOW, all_sources=True) == []
    [skipped] = poll_due(polling, now=NOW, source_ids=[sid])
    assert (skipped.status, skipped.error) == ("skipped", "paused")
    assert server.total_hits == 0


def test_a_source_leased_by_another_poller_is_left_to_it(polling, server):
    server.serve("/feed.xml", FEED)
    sid = add(polling, server.url("/feed.xml"))
    with digest_db.session_scope(polling.database_url) as session:
        held = session.get_one(Source, sid)
        held.lease_until, held.lease_token = NOW + timedelta(minutes=5), "someone-else"
    assert poll_due(polling, now=NOW) == []
    [skipped] = poll_due(polling, now=NOW, source_ids=[sid])
    assert skipped.status == "skipped" and "another poller" in skipped.error
    # A lease that ran out (its poller died) is taken over.
    assert len(poll_due(polling, now=NOW + timedelta(minutes=6))) == 1


def test_two_pollers_at_once_never_poll_one_source_twice(polling, server):
    paths = [f"/feed-{n}.xml" for n in range(8)]
    for n, path in enumerate(paths):
        server.serve(path, rss((f"p-{n}", f"Story {n}")))
        add(polling, server.url(path))
    results: list = []
    start = threading.Barrier(2)

    def poller():
        start.wait()
        results.append(poll_due(polling, now=NOW))

    threads = [threading.Thread(target=poller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    polled = [o.source_id for outcomes in results for o in outcomes]
    assert sorted(polled) == sorted(set(polled)) and len(polled) == 8
    assert all(server.hits(path) == 1 for path in paths)
    assert items(polling) == 8


def listing_page(n: int) -> bytes:
    return (f"Newsroom\nStory {n}a\nPublishing date: 9 October 2025\nSummary {n}a.\n"
            f"Story {n}b\nPublishing date: 8 October 2025\nSummary {n}b.\n").encode()


def test_a_listing_first_polled_backfills_its_older_pages_as_archive(polling, server,
                                                                     monkeypatch):
    """The HTML listing parser's pagination is its own (``ingest.listing``): here a stand-in
    gives each text page the next one's address, to prove what the poller does with it."""
    import digest.ingest.documents as documents

    real = documents.read_listing_document
    pages = {listing_page(n): server.url(f"/news-{n + 1}") for n in range(1, 5)}

    def paginated(body, **options):
        page = real(body, **options)
        page.next_page_url = pages.get(body)
        return page

    monkeypatch.setattr(documents, "read_listing_document", paginated)
    for n in range(1, 5):
        server.serve(f"/news-{n}", listing_page(n), content_type="text/plain; charset=utf-8")
    sid = add(polling, server.url("/news-1"), kind="listing", backfill_pages=2)
    [outcome] = poll_due(polling, now=NOW, queue=RecordingQueue(polling))
    assert outcome.status == "stored" and outcome.new_items == 6
    assert [server.hits(f"/news-{n}") for n in range(1, 5)] == [1, 1, 1, 0]
    with digest_db.session_scope(polling.database_url) as session:
        archive = {item.title: item.is_backfill for item in session.scalars(select(Item))}
    assert archive == {"Story 1a": False, "Story 1b": False, "Story 2a": True,
                       "Story 2b": True, "Story 3a": True, "Story 3b": True}
    assert source(polling, sid).items_added == 6
    # Later polls read the first page only.
    poll_due(polling, now=NOW, all_sources=True)
    assert [server.hits(f"/news-{n}") for n in range(1, 5)] == [2, 1, 1, 0]


def test_a_newsroom_html_listing_first_polled_keeps_its_links_and_backfills_the_next_page(
        polling, server):
    """The real pages (tests/data), read by the real HTML parser: the first page's items with
    their own links, the page its pager links to stored as archive and never mailed."""
    data = Path(__file__).resolve().parents[2] / "data"
    first = (data / "osce-newsroom-2025-10.html").read_bytes().replace(
        b'href="?page=1"', b'href="/newsroom/page-2"')
    server.serve("/newsroom", first, content_type="text/html; charset=utf-8")
    server.serve("/newsroom/page-2", (data / "osce-newsroom-2025-10-page2.html").read_bytes(),
                 content_type="text/html; charset=utf-8")
    sid = add(polling, server.url("/newsroom"), kind="listing", backfill_pages=3)
    [outcome] = poll_due(polling, now=NOW, queue=RecordingQueue(polling))
    # Nine stored, only the first page's seven announced (the archive is never mailed).
    assert outcome.status == "stored" and outcome.new_items == 9
    assert len(outcome.new_item_ids) == 7
    assert server.hits("/newsroom") == 1 and server.hits("/newsroom/page-2") == 1
    with digest_db.session_scope(polling.database_url) as session:
        stored = list(session.scalars(select(Item)))
        assert len(stored) == 9 and {item.source_id for item in stored} == {sid}
        # Relative anchors resolve against the address the page was fetched from.
        assert all(item.url and item.url.startswith(server.base + "/") for item in stored)
        assert len({item.url for item in stored}) == 9
        assert sum(item.is_backfill for item in stored) == 2
    assert source(polling, sid).items_added == 9


def test_a_connection_that_reaches_a_private_address_is_refused_before_its_answer_is_read(
        server, monkeypatch):
    """DNS rebinding: the name resolved to a public address when checked and to a private one
    when the connection was made. Simulated by letting the name check pass; the address the
    connection reached (the real local server's) is then refused, and nothing is read."""
    fetch_module = importlib.import_module("digest.ingest.fetch")
    server.serve("/feed.xml", b"<rss/>", content_type="application/rss+xml")
    monkeypatch.setattr(fetch_module, "check_public", lambda url, allow_private: None)
    with pytest.raises(IngestError, match="reached the private or loopback address 127.0.0.1"):
        fetch_module.fetch_source(server.url("/feed.xml"), allow_private=False, now=NOW)
    assert fetch_module.fetch_source(server.url("/feed.xml"), allow_private=True,
                                     now=NOW).body == b"<rss/>"


def test_an_item_another_writer_stores_at_the_same_moment_is_updated_not_a_failed_pass(
        polling, server, monkeypatch):
    """The race of a newsroom read through two sources (or a poll and a push): another writer
    commits one of the items between this poll's look-up and its insert. The insert's unique
    violation rolls back, and the second try finds the item and updates it."""
    import json

    from digest.ingest import ingest_json

    store_module = importlib.import_module("digest.ingest.store")
    real_existing = store_module._existing
    raced = []

    def existing_then_another_writer(session, keys, urls):
        found = real_existing(session, keys, urls)
        if not raced:
            raced.append(True)
            ingest_json(json.dumps({"guid": "a-1", "title": "An earlier title"}),
                        settings=polling, now=NOW)
        return found

    monkeypatch.setattr(store_module, "_existing", existing_then_another_writer)
    server.serve("/feed.xml", FEED)
    sid = add(polling, server.url("/feed.xml"))
    [outcome] = poll_due(polling, now=NOW)
    assert raced and outcome.status == "stored" and outcome.new_items == 1
    assert server.hits("/feed.xml") == 1  # stored again, not fetched again
    with digest_db.session_scope(polling.database_url) as session:
        titles = sorted(session.scalars(select(Item.title)))
    assert titles == ["First story", "Second story"]
    assert source(polling, sid).consecutive_failures == 0
