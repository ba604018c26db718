"""Forecasts and resend-failed at the web edges, on SQLite and PostgreSQL with a real SMTP
sink: the API's dry run answers with its forecast, a run's forecast has its own route,
resend-failed plans once; the admin shows a dry run's forecast and resends from a run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from digest.models import DigestRun, utcnow
from digest.subscribers import FilterSpec, upsert_subscriber
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    ADMIN_PASSWORD,
    api,
    client,
    db_session,
    taxo,
    wait_for_mail,
    web_settings,
)

V1 = "/api/v1"


@pytest.fixture
def item(db_session, taxo):
    for i in range(3):
        upsert_subscriber(db_session, f"r{i}@example.org", filters=[FilterSpec(["Policing"])],
                          smtputf8=False)
    made = make_item(db_session, "Border police training", themes=[taxo.policing],
                     ingested_at=utcnow() - timedelta(hours=1))
    db_session.commit()
    return made


def test_an_api_dry_run_answers_with_its_forecast(api, item):
    dry = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True})
    assert dry.status_code == 201, dry.text
    forecast = dry.json()["forecast"]
    assert (forecast["recipients"], forecast["messages"], forecast["sampled"]) == (3, 3, 3)
    assert forecast["average_bytes"] > 1000 and forecast["rate_limit"] == 0
    assert forecast["seconds_at_limit"] is None
    assert "messages: 3" in forecast["summary"]
    again = api.get(f"{V1}/runs/{dry.json()['id']}/forecast")
    assert again.status_code == 200 and again.json()["messages"] == 3
    assert api.get(f"{V1}/runs/999999/forecast").status_code == 404


def test_api_resend_failed_plans_one_resend_of_the_failed_readers(api, item, smtp_sink):
    smtp_sink.script("r1@example.org", "552 5.3.4 Message size exceeds fixed limit")
    real = api.post(f"{V1}/runs", json={"item_ids": [item.id]}).json()
    wait_for_mail(smtp_sink, 2)
    assert api.get(f"{V1}/runs/{real['id']}").json()["progress"]["failed"] == 1
    smtp_sink.clear()

    first = api.post(f"{V1}/runs/{real['id']}/resend-failed")
    assert first.status_code == 201, first.text
    assert first.json()["planned"] == 1 and first.json()["params"]["resend_failed_of"] == real["id"]
    [message] = wait_for_mail(smtp_sink, 1)
    assert message.rcpt_tos == ["r1@example.org"]
    second = api.post(f"{V1}/runs/{real['id']}/resend-failed")
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    assert api.post(f"{V1}/runs/999999/resend-failed").status_code == 404
    dry = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True}).json()
    refused = api.post(f"{V1}/runs/{dry['id']}/resend-failed")
    assert refused.status_code == 422 and "dry run" in refused.text


def test_the_admin_shows_a_dry_runs_forecast_and_resends_the_failed_ones(
        client, api, item, smtp_sink, db_session):
    assert client.post("/admin/login", data={"username": "admin", "password": ADMIN_PASSWORD},
                       follow_redirects=False).status_code == 302
    dry = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True}).json()
    page = client.get(f"/admin/digest-run/details/{dry['id']}")
    assert page.status_code == 200
    assert "messages: 3" in page.text and "no limit set (DIGEST_SEND_RATE=0)" in page.text

    smtp_sink.script("r2@example.org", "552 5.3.4 Message size exceeds fixed limit")
    real = api.post(f"{V1}/runs", json={"item_ids": [item.id], "slot_key": "adhoc:again"}).json()
    wait_for_mail(smtp_sink, 2)
    smtp_sink.clear()
    done = client.get(f"/admin/digest-run/action/resend-failed?pks={real['id']}",
                      follow_redirects=False)
    assert done.status_code == 302
    [message] = wait_for_mail(smtp_sink, 1)
    assert message.rcpt_tos == ["r2@example.org"]
    refused = client.get(f"/admin/digest-run/action/resend-failed?pks={dry['id']}")
    assert refused.status_code == 422 and "dry run: it sent nothing" in refused.text
    db_session.expire_all()
    assert len(db_session.scalars(select(DigestRun.id)).all()) == 3


def _empty_slots(db_session, settings, count: int) -> None:
    """Hourly slots nobody was due in (a Sunday: the readers' day is Monday), as the beat
    plans every hour."""
    from digest.selection import plan_scheduled_run
    from tests.factories import T0

    for k in range(count):
        plan_scheduled_run(db_session, "weekly", now=T0 - timedelta(days=1, hours=-k),
                           settings=settings)
        db_session.commit()


def test_the_apis_runs_list_folds_empty_runs_unless_asked(api, item, db_session, web_settings):
    _empty_slots(db_session, web_settings, 4)
    real = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True}).json()
    listed = api.get(f"{V1}/runs")
    assert [r["id"] for r in listed.json()] == [real["id"]]
    assert listed.headers["X-Empty-Runs-Hidden"] == "4"
    everything = api.get(f"{V1}/runs", params={"include_empty": "true"})
    assert len(everything.json()) == 5 and everything.headers["X-Empty-Runs-Hidden"] == "0"


def test_the_admins_runs_list_folds_empty_runs_with_a_link_to_them(
        client, api, item, db_session, web_settings):
    _empty_slots(db_session, web_settings, 3)
    real = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True}).json()
    assert client.post("/admin/login", data={"username": "admin", "password": ADMIN_PASSWORD},
                       follow_redirects=False).status_code == 302
    page = client.get("/admin/digest-run/list")
    assert page.status_code == 200
    assert "3 empty run(s) hidden" in page.text and "?include_empty=1" in page.text
    assert f"/admin/digest-run/details/{real['id']}" in page.text
    assert "weekly:2025-10-12T07" not in page.text
    shown = client.get("/admin/digest-run/list", params={"include_empty": "1"})
    assert "weekly:2025-10-12T07" in shown.text and "Hide the 3 empty run(s)" in shown.text


def test_the_forecast_of_a_finished_run_at_the_api_is_what_happened(api, item, smtp_sink):
    real = api.post(f"{V1}/runs", json={"item_ids": [item.id]}).json()
    wait_for_mail(smtp_sink, 3)  # sent in-process (no broker) before the answer came
    forecast = api.get(f"{V1}/runs/{real['id']}/forecast").json()
    assert forecast["outcome"]["sent"] == 3 and forecast["outcome"]["skipped"] == 0
    assert forecast["summary"][1].startswith("finished (done): sent 3, failed 0")
