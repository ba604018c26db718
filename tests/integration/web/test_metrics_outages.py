"""/metrics tells the truth fast when a source is down (issue 15, defects 1 and 8): a Redis
out of memory or frozen is ``digest_broker_up 0``, a PostgreSQL frozen (a partition, as its
clients see it) is ``digest_database_up 0`` within seconds, not after a minute's hang.

Real servers of the test's own on the spare ports (a redis-server, an initdb cluster),
frozen with SIGSTOP and filled with ``maxmemory``; the machine's own servers are untouched.
The timings are bounds well above the timeout and far below the old hang, not speeds."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from digest import db
from digest.web import create_app
from digest.web.metrics import TIMEOUT_SECONDS
from tests.integration.web.support import web_settings  # noqa: F401

# Far below the minute a scrape hung for during a partition; far above the timeout.
ANSWERS_WITHIN = TIMEOUT_SECONDS * 4


def _scrape(client: TestClient) -> tuple[dict[str, float], float]:
    started = time.monotonic()
    response = client.get("/metrics")
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    return ({sample.name: sample.value
             for family in text_string_to_metric_families(response.text)
             for sample in family.samples if not sample.labels}, took)


def test_a_redis_out_of_memory_is_reported_as_a_broker_down(web_settings, own_redis,
                                                           monkeypatch):
    monkeypatch.setattr(web_settings, "broker_url", own_redis.url)
    with TestClient(create_app(web_settings)) as client:
        assert _scrape(client)[0]["digest_broker_up"] == 1
        own_redis.fill_memory()  # reads still answered, every write refused
        assert _scrape(client)[0]["digest_broker_up"] == 0
        own_redis.free_memory()
        assert _scrape(client)[0]["digest_broker_up"] == 1


def test_a_frozen_redis_is_reported_down_within_seconds(web_settings, own_redis, monkeypatch):
    monkeypatch.setattr(web_settings, "broker_url", own_redis.url)
    with TestClient(create_app(web_settings)) as client:
        own_redis.freeze()
        try:
            figures, took = _scrape(client)
        finally:
            own_redis.thaw()
    assert figures["digest_broker_up"] == 0
    assert took < ANSWERS_WITHIN


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_frozen_database_is_reported_down_within_seconds_and_up_once_it_answers(
        web_settings, own_postgres, monkeypatch):
    db.upgrade(own_postgres.url)
    monkeypatch.setattr(web_settings, "database_url", own_postgres.url)
    with TestClient(create_app(web_settings)) as client:
        assert _scrape(client)[0]["digest_database_up"] == 1
        own_postgres.freeze()
        try:
            frozen, took = _scrape(client)
            again, took_again = _scrape(client)  # a scrape stuck in the last one is no help
        finally:
            own_postgres.thaw()
        assert _scrape(client)[0]["digest_database_up"] == 1
    assert frozen["digest_database_up"] == 0 and again["digest_database_up"] == 0
    assert took < ANSWERS_WITHIN and took_again < ANSWERS_WITHIN
    db.engine_for(own_postgres.url).dispose()
