"""/metrics for the registered sources, on SQLite and PostgreSQL: a source failing five times
in a row shows its failures, its last success and its error; a stale one says so; a removed
one is gone."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from digest.ingest import registry
from digest.models import utcnow
from tests.integration.web.sources_support import ERROR, PUBLIC_FEED, failing_source
from tests.integration.web.support import client, db_session, web_settings  # noqa: F401


def _samples(client) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _value(samples, name: str, source_id: int) -> float:
    [sample] = [s for s in samples.get(name, []) if s.labels["source"] == str(source_id)]
    return sample.value


def test_a_source_failing_five_times_shows_its_failures_last_success_and_error(
        client, db_session, web_settings):
    now = utcnow()
    last_success = now - timedelta(hours=3)
    source = failing_source(db_session, web_settings, since=now - timedelta(hours=2),
                            last_success=last_success, now=now)
    samples = _samples(client)
    assert _value(samples, "digest_source_consecutive_failures", source.id) == 5
    assert _value(samples, "digest_source_failures_total", source.id) == 5
    assert _value(samples, "digest_source_polls_total", source.id) == 8
    assert _value(samples, "digest_source_not_modified_total", source.id) == 1
    assert _value(samples, "digest_source_items_added_total", source.id) == 12
    assert _value(samples, "digest_source_bytes_fetched_total", source.id) == 48_000
    assert _value(samples, "digest_source_up", source.id) == 0
    assert _value(samples, "digest_source_stale", source.id) == 0
    assert abs(_value(samples, "digest_source_last_success_timestamp_seconds", source.id)
               - last_success.timestamp()) < 1
    [info] = samples["digest_source_info"]
    assert info.labels == {"source": str(source.id), "url": PUBLIC_FEED, "kind": "feed",
                           "health": "failing", "error": ERROR}


def test_a_stale_source_is_flagged_and_a_new_one_is_up_with_no_success_time_yet(
        client, db_session, web_settings):
    now = utcnow()
    stale = failing_source(db_session, web_settings,
                           since=now - timedelta(hours=web_settings.source_stale_hours + 1),
                           last_success=now - timedelta(days=3), now=now)
    new = registry.add_source(db_session, "https://93.184.215.14/other.xml",
                              settings=web_settings)
    db_session.commit()
    samples = _samples(client)
    assert _value(samples, "digest_source_stale", stale.id) == 1
    assert _value(samples, "digest_source_stale", new.id) == 0
    assert _value(samples, "digest_source_up", new.id) == 1
    assert _value(samples, "digest_source_polls_total", new.id) == 0
    assert [s.labels["source"] for s in samples[
        "digest_source_last_success_timestamp_seconds"]] == [str(stale.id)]
    assert {s.labels["source"]: s.labels["health"] for s in samples["digest_source_info"]} == {
        str(stale.id): "stale", str(new.id): "new"}


def test_a_removed_source_leaves_metrics_and_none_registered_is_no_series(
        client, db_session, web_settings):
    assert "digest_source_info" not in _samples(client)
    source = registry.add_source(db_session, PUBLIC_FEED, settings=web_settings)
    db_session.commit()
    assert len(_samples(client)["digest_source_info"]) == 1
    registry.remove_source(db_session, source.id)
    db_session.commit()
    assert "digest_source_info" not in _samples(client)
