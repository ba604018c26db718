"""``digest sources ...`` run as a real process against the tests' own newsroom server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, update

from digest.models import Item, Source
from tests.sourceserver import SourceServer, rss
from tests.system.cli.test_cli import assert_one_line_error, cli, count  # noqa: F401 (fixture)

FEED = rss(("c-1", "Mission opens office"), ("c-2", "Training for judges"))
ALLOW = {"sources_allow_private": "true"}


@pytest.fixture
def server():
    with SourceServer() as s:
        yield s


def test_add_list_show_pause_resume_remove(cli, server):
    server.serve("/feed.xml", FEED)
    url = server.url("/feed.xml")
    added = cli("sources", "add", url, "--every", "30m", "--language", "fr",
                "--location", "Vienna", **ALLOW)
    assert added.returncode == 0, added.stderr
    assert f"added source 1: {url} (feed, every 30m); due now" in added.stdout
    listed = cli("sources", "list", **ALLOW)
    assert "new" in listed.stdout and url in listed.stdout and "30m" in listed.stdout
    shown = cli("sources", "show", "1", **ALLOW)
    assert "location Vienna" in shown.stdout and "language fr" in shown.stdout
    assert "paused" in cli("sources", "pause", url, **ALLOW).stdout
    assert "paused" in cli("sources", "list", **ALLOW).stdout
    assert "no source is due" in cli("sources", "poll", "--all", **ALLOW).stdout
    assert "resumed: due now" in cli("sources", "resume", "1", **ALLOW).stdout
    removed = cli("sources", "remove", "1", **ALLOW)
    assert "removed source 1" in removed.stdout
    assert "no source is registered" in cli("sources", "list").stdout
    assert server.total_hits == 0


def test_poll_stores_then_a_304_stores_nothing_and_tick_polls_too(cli, server):
    server.serve("/feed.xml", FEED)
    cli("sources", "add", server.url("/feed.xml"), **ALLOW)
    first = cli("sources", "poll", **ALLOW)
    assert first.returncode == 0, first.stderr
    assert "stored, 2 new item(s)" in first.stdout and count(cli.db_url, Item) == 2
    assert "no source is due" in cli("sources", "poll", **ALLOW).stdout
    again = cli("sources", "poll", "--all", **ALLOW)
    assert "not modified" in again.stdout and server.hits("/feed.xml") == 2
    _make_due(cli.db_url)
    ticked = cli("tick", **ALLOW)
    assert ticked.returncode == 0, ticked.stderr
    assert "sources: 1 due source(s) polled, 0 new item(s), 0 failed" in ticked.stdout
    assert server.hits("/feed.xml") == 3 and count(cli.db_url, Item) == 2


def test_a_source_failing_five_times_shows_its_error_in_list_and_show(cli, server):
    cli("sources", "add", server.url("/status/500"), "--every", "1m", **ALLOW)
    for _ in range(5):
        polled = cli("sources", "poll", "--all", **ALLOW)
        assert "failed: " in polled.stdout and "HTTP 500" in polled.stdout
    listed = cli("sources", "list", **ALLOW)
    assert "failing" in listed.stdout and "HTTP 500" in listed.stdout
    shown = cli("sources", "show", "1", **ALLOW)
    assert "consecutive failures  5" in shown.stdout and "answered HTTP 500" in shown.stdout
    # Failing for longer than DIGEST_SOURCE_STALE_HOURS: stale (red on a terminal).
    engine = create_engine(cli.db_url)
    with engine.begin() as conn:
        conn.execute(update(Source).values(failing_since=datetime.now(UTC)
                                           - timedelta(hours=30)))
    engine.dispose()
    assert "stale" in cli("sources", "list", **ALLOW).stdout


def test_check_prints_what_would_be_stored_and_stores_nothing(cli, server):
    server.serve("/feed.xml", FEED)
    checked = cli("sources", "check", server.url("/feed.xml"), **ALLOW)
    assert checked.returncode == 0, checked.stderr
    assert "2 item(s) would be stored" in checked.stdout
    assert "Mission opens office" in checked.stdout and "nothing was stored" in checked.stdout
    assert count(cli.db_url, Item) == 0 and count(cli.db_url, Source) == 0


def test_bad_inputs_are_one_line_errors(cli, server):
    assert_one_line_error(cli("sources", "add", server.url("/feed.xml")),
                          "private or loopback", "DIGEST_SOURCES_ALLOW_PRIVATE")
    assert_one_line_error(cli("sources", "add", "ftp://example.org/feed"), "http://")
    assert_one_line_error(cli("sources", "add", server.url("/x"), "--every", "5s", **ALLOW),
                          "under a minute")
    assert_one_line_error(cli("sources", "add", server.url("/x"), "--kind", "podcast",
                              **ALLOW), "feed, listing, json")
    assert_one_line_error(cli("sources", "show", "42"), "'digest sources list'")
    assert_one_line_error(cli("sources", "check", server.url("/loop/a"), **ALLOW),
                          "redirect loop")
    assert_one_line_error(cli("sources", "check", server.url("/huge"), **ALLOW),
                          "DIGEST_SOURCE_MAX_BYTES")
    assert_one_line_error(cli("sources", "check", server.url("/feed.xml")),
                          "private or loopback")
    assert count(cli.db_url, Source) == 0


def _make_due(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Source).values(next_poll_at=Source.created_at))
    engine.dispose()
