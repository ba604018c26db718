"""Sources over the API (/api/v1/sources), on SQLite and PostgreSQL: register, list with their
health record, read one, pause, resume, remove; every refusal a 4xx that says why, and
nothing written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from digest.models import Item, Source, utcnow
from tests.factories import make_item
from tests.integration.web.sources_support import ERROR, PUBLIC_FEED, failing_source
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    db_session,
    web_settings,
)

SOURCES = "/api/v1/sources"


def _count(db_session) -> int:
    db_session.expire_all()
    return db_session.scalar(select(func.count()).select_from(Source))


def test_a_source_is_added_with_its_defaults_and_read_back_new_and_due(api, db_session):
    response = api.post(SOURCES, json={
        "url": PUBLIC_FEED, "kind": "listing", "every": "1h", "content_type": "News",
        "location": "OSCE Mission to Serbia", "language": "sr-Latn", "backfill_pages": 3})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["url"], body["kind"], body["every"], body["every_seconds"]) == (
        PUBLIC_FEED, "listing", "1h", 3600)
    assert (body["content_type"], body["location"], body["language"], body["backfill_pages"]) == (
        "News", "OSCE Mission to Serbia", "sr-latn", 3)
    assert (body["health"], body["polls"], body["consecutive_failures"]) == ("new", 0, 0)
    assert body["next_poll_at"] is not None and body["last_success_at"] is None
    assert body["websub"] == {"hub_url": None, "topic_url": None, "state": None,
                              "lease_until": None, "last_push_at": None, "error": None}
    assert api.get(f"{SOURCES}/{body['id']}").json() == body
    assert [s["id"] for s in api.get(SOURCES).json()] == [body["id"]]


def test_a_failing_source_is_listed_with_its_error_failures_and_last_success(
        api, db_session, web_settings):
    now = utcnow()
    source = failing_source(db_session, web_settings, since=now - timedelta(hours=2),
                            last_success=now - timedelta(hours=3), now=now)
    listed = api.get(SOURCES).json()
    assert len(listed) == 1
    body = listed[0]
    assert (body["id"], body["health"], body["last_error"], body["last_status"]) == (
        source.id, "failing", ERROR, 503)
    assert (body["consecutive_failures"], body["failures"], body["polls"],
            body["not_modified"], body["items_added"], body["bytes_fetched"]) == (
        5, 5, 8, 1, 12, 48_000)
    assert body["last_success_at"] is not None and body["failing_since"] is not None


def test_a_source_failing_past_the_stale_hours_is_stale(api, db_session, web_settings):
    now = utcnow()
    failing_source(db_session, web_settings,
                   since=now - timedelta(hours=web_settings.source_stale_hours + 1),
                   last_success=now - timedelta(days=2), now=now)
    assert api.get(SOURCES).json()[0]["health"] == "stale"


def test_pause_stops_the_schedule_resume_makes_it_due_and_remove_keeps_its_items(
        api, db_session):
    source_id = api.post(SOURCES, json={"url": PUBLIC_FEED}).json()["id"]
    paused = api.post(f"{SOURCES}/{source_id}/pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["health"], paused.json()["paused"], paused.json()["next_poll_at"]) == (
        "paused", True, None)
    before = utcnow()
    resumed = api.post(f"{SOURCES}/{source_id}/resume").json()
    assert (resumed["health"], resumed["paused"]) == ("new", False)
    db_session.expire_all()
    due = db_session.get(Source, source_id).next_poll_at
    assert due >= before - timedelta(seconds=1)

    item = make_item(db_session, "From the feed")
    item.source_id = source_id
    db_session.commit()
    removed = api.delete(f"{SOURCES}/{source_id}")
    assert removed.status_code == 204
    assert api.get(f"{SOURCES}/{source_id}").status_code == 404
    db_session.expire_all()
    kept = db_session.get(Item, item.id)
    assert kept is not None and kept.source_id is None


@pytest.mark.parametrize(("body", "words"), [
    ({"url": "http://127.0.0.1:6379/"}, "private or loopback"),
    ({"url": "http://10.0.0.8/feed"}, "private or loopback"),
    ({"url": "ftp://93.184.215.14/feed"}, "not an http:// or https:// address"),
    ({"url": PUBLIC_FEED, "every": "10s"}, "under a minute"),
    ({"url": PUBLIC_FEED, "every": "often"}, "invalid interval"),
    ({"url": PUBLIC_FEED, "language": "english!"}, "invalid language"),
], ids=["loopback", "private", "not-http", "interval-too-short", "interval-not-a-duration",
        "bad-language"])
def test_a_refused_source_is_a_422_that_says_why_and_nothing_is_added(
        api, db_session, body, words):
    response = api.post(SOURCES, json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    assert _count(db_session) == 0


def test_the_same_url_twice_is_a_422_naming_the_existing_source(api, db_session):
    first = api.post(SOURCES, json={"url": PUBLIC_FEED}).json()
    again = api.post(SOURCES, json={"url": PUBLIC_FEED, "every": "1h"})
    assert again.status_code == 422
    assert f"already registered as source {first['id']}" in again.json()["detail"]
    assert _count(db_session) == 1


def test_pydantic_refuses_an_unknown_kind_a_field_it_does_not_know_and_a_bad_backfill(
        api, db_session):
    for body in ({"url": PUBLIC_FEED, "kind": "carrier-pigeon"},
                 {"url": PUBLIC_FEED, "colour": "blue"},
                 {"url": PUBLIC_FEED, "backfill_pages": -1},
                 {"url": "x" * 2001}):
        assert api.post(SOURCES, json=body).status_code == 422, body
    assert _count(db_session) == 0


@pytest.mark.parametrize(("method", "path"), [
    ("get", ""), ("post", "/pause"), ("post", "/resume"), ("post", "/poll"), ("delete", ""),
])
def test_an_unknown_source_id_is_a_404_that_says_how_to_list_them(api, db_session, method,
                                                                   path):
    response = getattr(api, method)(f"{SOURCES}/4242{path}")
    assert response.status_code == 404, response.text
    assert "no source '4242'" in response.json()["detail"]


def test_the_sources_api_needs_the_token(client):
    assert client.get(SOURCES).status_code == 401
    assert client.post(SOURCES, json={"url": PUBLIC_FEED}).status_code == 401
    assert client.post(f"{SOURCES}/1/poll").status_code == 401
    assert client.delete(f"{SOURCES}/1").status_code == 401


def test_the_sources_routes_are_in_the_openapi_document(api):
    paths = api.get("/openapi.json").json()["paths"]
    for path in (SOURCES, f"{SOURCES}/{{source_id}}", f"{SOURCES}/{{source_id}}/pause",
                 f"{SOURCES}/{{source_id}}/resume", f"{SOURCES}/{{source_id}}/poll"):
        assert path in paths, path
