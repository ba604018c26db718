"""/metrics after a real send over SMTP (SQLite and PostgreSQL), and the JSON log lines of
that send: what an operator's Prometheus and log search see."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select

from digest.delivery import send_deliveries
from digest.logs import configure_logging
from digest.models import utcnow
from digest.records import due_for_retry
from digest.selection import plan_scheduled_run
from digest.web import create_app
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.integration.web.support import client, web_settings  # noqa: F401

REDIS = "redis://127.0.0.1:6379/0"


def _drop_log_handler() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "digest"]:
        root.removeHandler(handler)


def _scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


@pytest.fixture
def sent_run(session, smtp_sink, web_settings):
    """Four readers of one weekly run: two accepted, one unknown (550 5.1.1), one 451."""
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for name in ("one", "two", "gone", "later"):
        make_subscriber(session, f"{name}@example.org", {"themes": [t.policing]})
    session.commit()
    smtp_sink.script("gone@example.org", "550 5.1.1 No such user")
    smtp_sink.script("later@example.org", "451 4.3.0 Try again later")
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=web_settings)
    session.commit()
    log = io.StringIO()
    configure_logging("json", "INFO", stream=log)
    try:
        result = send_deliveries(run.pending_ids, settings=web_settings)
    finally:
        _drop_log_handler()
    assert (result.sent, result.failed, result.deferred) == (2, 1, 1)
    return run, [json.loads(line) for line in log.getvalue().splitlines()]


def test_metrics_after_a_send_count_its_outcomes_by_run_kind(client, sent_run):
    figures = _scrape(client)

    def value(name, **labels):
        return figures[(name, tuple(sorted(labels.items())))]

    assert value("digest_database_up") == 1
    assert value("digest_deliveries", kind="weekly", status="sent") == 2
    assert value("digest_deliveries", kind="weekly", status="failed") == 1
    assert value("digest_deliveries", kind="weekly", status="deferred") == 1
    assert value("digest_messages_sent_total", kind="weekly") == 2
    assert value("digest_suppressions", reason="hard_bounce") == 1
    assert value("digest_runs", kind="weekly", status="sending") == 1
    # The deferred row waits for its back-off: still to send, but nobody's backlog yet.
    assert value("digest_oldest_unsent_delivery_age_seconds") >= 0
    assert value("digest_oldest_due_delivery_age_seconds") == 0
    # No broker configured: no queue figures rather than made-up zeros.
    assert not any(name.startswith("digest_queue") for name, _ in figures)


def test_every_log_line_of_a_send_names_its_run_and_delivery(sent_run, session):
    run, lines = sent_run
    refused = [line for line in lines if line["event"] == "delivery refused"]
    assert len(refused) == 2  # the 550 and the 451; accepted messages write no line each
    assert {line["smtp_code"] for line in refused} == {550, 451}
    for line in refused:
        assert line["run_id"] == run.run_id
        assert line["delivery_id"] in run.pending_ids
        assert line["level"] == "warning" and "timestamp" in line
    (batch,) = [line for line in lines if line["event"] == "batch sent"]
    assert (batch["run_id"], batch["sent"], batch["failed"], batch["deferred"]) == (
        run.run_id, 2, 1, 1)
    assert "delivery_id" not in batch  # bound for one message only, not left behind


def test_a_finished_run_reports_its_duration(client, sent_run, session, web_settings):
    later = utcnow() + timedelta(hours=1)
    due = due_for_retry(session, now=later)
    session.commit()
    assert len(due) == 1  # the 451, whose second attempt the sink accepts
    send_deliveries(due, now=later, settings=web_settings)
    figures = _scrape(client)
    assert figures[("digest_runs", (("kind", "weekly"), ("status", "done")))] == 1
    assert figures[("digest_run_duration_seconds", (("kind", "weekly"),))] >= 0
    assert figures[("digest_run_finished_timestamp_seconds", (("kind", "weekly"),))] > 0
    assert figures[("digest_messages_sent_total", (("kind", "weekly"),))] == 3


def test_metrics_ask_for_the_token_when_one_is_set(web_settings, monkeypatch):
    monkeypatch.setattr(web_settings, "metrics_token", SecretStr("scrape-token-0123"))
    with TestClient(create_app(web_settings)) as c:
        assert c.get("/metrics").status_code == 401
        wrong = c.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "DIGEST_METRICS_TOKEN" in wrong.text
        ok = c.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123"})
        assert ok.status_code == 200 and "digest_database_up 1.0" in ok.text


def test_queue_length_is_the_redis_list_of_the_celery_queue(web_settings, monkeypatch):
    queue = f"metrics-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(web_settings, "broker_url", REDIS)
    monkeypatch.setattr(web_settings, "task_queue", queue)
    r = redis.Redis.from_url(REDIS)
    try:
        r.lpush(queue, "a", "b", "c")
        r.lpush(f"{queue}\x06\x163", "d")  # a task sent with priority 3
        with TestClient(create_app(web_settings)) as c:
            figures = _scrape(c)
        assert figures[("digest_broker_up", ())] == 1
        assert figures[("digest_queue_length", (("queue", queue),))] == 4
        assert ("digest_queue_unacked", ()) in figures
    finally:
        r.delete(queue, f"{queue}\x06\x163")
        r.close()


def test_a_broker_that_does_not_answer_is_reported_not_a_failed_scrape(web_settings,
                                                                       monkeypatch):
    monkeypatch.setattr(web_settings, "broker_url", "redis://127.0.0.1:1/0")
    with TestClient(create_app(web_settings)) as c:
        figures = _scrape(c)
    assert figures[("digest_broker_up", ())] == 0
    assert figures[("digest_database_up", ())] == 1


def test_a_database_that_does_not_answer_is_reported_not_a_failed_scrape(web_settings,
                                                                         monkeypatch,
                                                                         tmp_path):
    monkeypatch.setattr(web_settings, "database_url",
                        "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with TestClient(create_app(web_settings)) as c:
        figures = _scrape(c)
    assert figures[("digest_database_up", ())] == 0
    assert not any(name == "digest_deliveries" for name, _ in figures)


def _counters(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            if family.type == "counter" for sample in family.samples
            if sample.name.endswith("_total")}


def test_counters_never_go_down_when_retention_prunes_the_rows_they_count(
        client, sent_run, session, web_settings):
    from digest.delivery.retention import prune
    from digest.models import Bounce, Delivery, DeliveryStatus, Fault

    later = utcnow() + timedelta(hours=1)
    send_deliveries(due_for_retry(session, now=later), now=later, settings=web_settings)
    session.expire_all()
    bounced = session.scalars(select(Delivery).where(
        Delivery.status == DeliveryStatus.sent).order_by(Delivery.id)).first()
    session.add(Bounce(delivery_id=bounced.id, email=bounced.email, status_code="4.2.2",
                       kind=Fault.soft, diagnostic="mailbox full"))
    session.commit()
    before = _counters(client)
    assert before[("digest_messages_sent_total", (("kind", "weekly"),))] == 3
    assert before[("digest_bounces_total", (("fault", "soft"), ("kind", "weekly")))] == 1

    report = prune(session, web_settings, now=utcnow() + timedelta(days=200), batch_size=2)
    assert (report.deliveries, report.bounces) == (4, 1)
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0

    after = _counters(client)
    for key, value in before.items():
        assert after.get(key, 0) >= value, f"{key} went down: {value} -> {after.get(key)}"
    assert after[("digest_messages_sent_total", (("kind", "weekly"),))] == 3
    assert after[("digest_bounces_total", (("fault", "soft"), ("kind", "weekly")))] == 1
    # The bounce went with its delivery: it is not counted again as naming no delivery.
    assert not any(name == "digest_bounces_total" and ("kind", "unknown") in labels
                   for name, labels in after)
    pruned = {dict(labels)["status"]: value for (name, labels), value in after.items()
              if name == "digest_deliveries_pruned_total"}
    assert pruned == {"sent": 3, "failed": 1}

    # A second prune finds nothing and adds nothing.
    assert prune(session, web_settings, now=utcnow() + timedelta(days=200)).deliveries == 0
    assert _counters(client) == after
