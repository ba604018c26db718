"""Polling a source now from the API and the admin, against the tests' own newsroom server on
127.0.0.1 (real HTTP), on SQLite and PostgreSQL; and the issue's promise end to end: a source
failing five times backs off and shows its error in the API, the admin and /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from digest.ingest import registry
from digest.ingest.polling import poll_due
from digest.models import Item, Source, utcnow
from tests.integration.web.sources_support import newsroom, private_ok  # noqa: F401
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    csrf_of,
    db_session,
    web_settings,
)
from tests.integration.web.test_admin import login
from tests.sourceserver import rss

SOURCES = "/api/v1/sources"
FEED = rss(("p-1", "First story"), ("p-2", "Second story"))


def test_poll_now_over_the_api_stores_the_items_then_hears_304(private_ok, api, db_session,
                                                                 newsroom):
    newsroom.serve("/feed.xml", FEED)
    source_id = api.post(SOURCES, json={"url": newsroom.url("/feed.xml"), "every": "1h"}).json()[
        "id"]
    first = api.post(f"{SOURCES}/{source_id}/poll")
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["outcome"]["status"], body["outcome"]["new_items"], body["outcome"]["error"]) == (
        "stored", 2, None)
    assert (body["source"]["health"], body["source"]["polls"], body["source"]["items_added"]) == (
        "ok", 1, 2)
    assert body["source"]["last_success_at"] is not None
    again = api.post(f"{SOURCES}/{source_id}/poll").json()
    assert (again["outcome"]["status"], again["source"]["not_modified"]) == ("not_modified", 1)
    assert db_session.scalar(select(func.count()).select_from(Item)) == 2
    assert newsroom.hits("/feed.xml") == 2


def test_poll_now_of_a_failing_server_answers_the_error_and_a_paused_source_is_skipped(
        private_ok, api, newsroom):
    source_id = api.post(SOURCES, json={"url": newsroom.url("/status/503")}).json()["id"]
    failed = api.post(f"{SOURCES}/{source_id}/poll").json()
    assert failed["outcome"]["status"] == "failed"
    assert "503" in failed["outcome"]["error"]
    assert (failed["source"]["health"], failed["source"]["consecutive_failures"]) == (
        "failing", 1)
    assert failed["source"]["last_error"] == failed["outcome"]["error"]
    api.post(f"{SOURCES}/{source_id}/pause")
    skipped = api.post(f"{SOURCES}/{source_id}/poll").json()
    assert (skipped["outcome"]["status"], skipped["outcome"]["error"]) == ("skipped", "paused")
    assert newsroom.hits("/status/503") == 1


def test_poll_now_in_the_admin_says_what_it_stored_or_why_it_failed(
        private_ok, client, db_session, web_settings, newsroom):
    assert login(client).status_code == 302
    newsroom.serve("/feed.xml", FEED)
    good = registry.add_source(db_session, newsroom.url("/feed.xml"), settings=web_settings)
    bad = registry.add_source(db_session, newsroom.url("/status/500"), settings=web_settings)
    db_session.commit()

    def poll(source_id: int):
        csrf = csrf_of(client.get("/admin/sources").text)
        return client.post(f"/admin/sources/{source_id}/poll", data={"csrf": csrf})

    stored = poll(good.id)
    assert stored.status_code == 200
    assert f"Polled source {good.id}: 2 new item(s) stored." in stored.text
    failed = poll(bad.id)
    assert failed.status_code == 200
    assert f"Polling source {bad.id} failed:" in failed.text and "500" in failed.text


def test_a_source_failing_five_times_backs_off_and_shows_its_error_everywhere(
        private_ok, api, db_session, web_settings, newsroom):
    newsroom.serve("/feed.xml", FEED)
    source_id = api.post(SOURCES, json={"url": newsroom.url("/feed.xml"), "every": "15m"}).json()[
        "id"]
    start = utcnow()
    [ok] = poll_due(web_settings, now=start)
    assert ok.status == "stored"
    # From now on the newsroom's server answers 503 (the address written in the model: the
    # tests' server serves a status from its own path).
    source = db_session.get_one(Source, source_id)
    source.url = newsroom.url("/status/503")
    db_session.commit()
    waits = []
    for _ in range(5):
        now = db_session.get_one(Source, source_id).next_poll_at
        [outcome] = poll_due(web_settings, now=now)
        assert outcome.status == "failed", outcome
        db_session.expire_all()
        waits.append((outcome.next_poll_at - now).total_seconds())
    assert all(later > earlier for earlier, later in zip(waits, waits[1:], strict=False)), waits
    error = db_session.get_one(Source, source_id).last_error
    assert error and "503" in error

    body = api.get(f"{SOURCES}/{source_id}").json()
    assert (body["consecutive_failures"], body["last_error"], body["health"]) == (
        5, error, "failing")
    assert login(api).status_code == 302
    page = api.get("/admin/sources").text
    assert error in page and "5 failure(s) in a row" in page
    metrics = {(s.name, s.labels.get("source")): s for f in text_string_to_metric_families(
        api.get("/metrics").text) for s in f.samples}
    assert metrics[("digest_source_consecutive_failures", str(source_id))].value == 5
    assert metrics[("digest_source_info", str(source_id))].labels["error"] == error[:200]
    assert metrics[("digest_source_last_success_timestamp_seconds", str(source_id))].value == (
        start.timestamp())
