"""The JSON API over HTTP on SQLite and PostgreSQL: auth, subscribers CRUD, 422 answers that
name the bad value, items + the item_published event (real SMTP sink), runs, deliveries, CSV."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from digest.models import Subscriber, Suppression, utcnow
from digest.settings import get_settings, reset_settings_cache
from digest.tokens import subscriber_token
from digest.web import create_app
from tests.conftest import TEST_DATA
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    API_TOKEN,
    api,
    client,
    db_session,
    taxo,
    wait_for_mail,
    web_settings,
)

V1 = "/api/v1"


def _operations(app) -> list[tuple[str, str]]:
    ops = []
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            ops.append(
                (
                    method.upper(),
                    path.replace("{subscriber_id}", "1")
                    .replace("{run_id}", "1")
                    .replace("{facet}", "theme"),
                )
            )
    return ops


def test_every_api_route_answers_401_without_or_with_a_wrong_token(client, web_settings):
    ops = _operations(client.app)
    assert len(ops) >= 12
    for method, path in ops:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {API_TOKEN}"},
            {"Authorization": f"Bearer {API_TOKEN}x"},
        ):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_subscriber_link_token_is_no_api_credential(client, db_session, taxo, web_settings):
    from digest.subscribers import upsert_subscriber

    sub, _ = upsert_subscriber(db_session, "ann@example.org", smtputf8=False)
    db_session.commit()
    for purpose in ("manage", "unsubscribe", "confirm"):
        token = subscriber_token(purpose, sub.id, web_settings)
        response = client.get(f"{V1}/subscribers", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert "ann@example.org" not in response.text


def test_api_is_off_without_a_configured_token(settings, monkeypatch):
    monkeypatch.delenv("DIGEST_API_TOKEN", raising=False)
    reset_settings_cache()
    with TestClient(create_app(get_settings())) as c:
        response = c.get(f"{V1}/subscribers", headers={"Authorization": "Bearer "})
        assert response.status_code == 401
        assert "DIGEST_API_TOKEN" in response.json()["detail"]


def test_subscriber_crud_round_trip_with_filters(api, db_session, taxo):
    body = {
        "email": "ann@Example.ORG",
        "frequency": "daily",
        "timezone": "Europe/Vienna",
        "hour": 7,
        "filters": [
            {"themes": ["Policing"]},
            {"locations": ["South-Eastern Europe"], "content_types": ["News"]},
        ],
    }
    created = api.post(f"{V1}/subscribers", json=body)
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["email"] == "ann@example.org"
    assert sub["filters"] == [
        {"themes": ["Policing"], "locations": [], "content_types": []},
        {"themes": [], "locations": ["South-Eastern Europe"], "content_types": ["News"]},
    ]
    assert api.get(f"{V1}/subscribers/{sub['id']}").json() == sub

    again = api.post(f"{V1}/subscribers", json=body)
    assert (
        again.status_code == 409
        and f"PATCH /api/v1/subscribers/{sub['id']}" in again.json()["detail"]
    )

    patched = api.patch(
        f"{V1}/subscribers/{sub['id']}",
        json={"filters": [{"themes": ["Elections"]}], "status": "unsubscribed"},
    )
    assert patched.status_code == 200
    assert patched.json()["filters"] == [
        {"themes": ["Elections"], "locations": [], "content_types": []}
    ]
    assert patched.json()["status"] == "unsubscribed" and patched.json()["hour"] == 7

    listing = api.get(f"{V1}/subscribers", params={"status": "unsubscribed"}).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == sub["id"]
    assert api.get(f"{V1}/subscribers", params={"status": "active"}).json()["total"] == 0

    suppressed = api.patch(f"{V1}/subscribers/{sub['id']}", json={"status": "suppressed"})
    assert suppressed.json()["status"] == "suppressed"
    assert db_session.scalars(select(Suppression.email)).all() == ["ann@example.org"]
    back = api.patch(f"{V1}/subscribers/{sub['id']}", json={"status": "active"})
    assert back.json()["status"] == "active"
    assert db_session.scalars(select(Suppression)).all() == []

    assert api.delete(f"{V1}/subscribers/{sub['id']}").status_code == 204
    assert api.get(f"{V1}/subscribers/{sub['id']}").status_code == 404
    assert db_session.scalars(select(Subscriber)).all() == []


@pytest.mark.parametrize(
    "body, facet, bad, valid_list",
    [
        ({"filters": [{"themes": ["Astrology"]}]}, "theme", "Astrology", "/api/v1/taxonomy/theme"),
        (
            {"filters": [{"locations": ["Atlantis"]}]},
            "location",
            "Atlantis",
            "/api/v1/taxonomy/location",
        ),
        (
            {"filters": [{"content_types": ["Poem"]}]},
            "content_type",
            "Poem",
            "/api/v1/taxonomy/content_type",
        ),
    ],
)
def test_unknown_taxonomy_answers_422_naming_the_value_and_the_valid_list(
    api, db_session, taxo, body, facet, bad, valid_list
):
    response = api.post(f"{V1}/subscribers", json={"email": "ann@example.org", **body})
    assert response.status_code == 422
    problem = response.json()
    assert problem["facet"] == facet and problem["invalid"] == [bad]
    assert bad in problem["detail"]
    assert problem["valid_list"] == valid_list
    assert problem["valid"] == api.get(valid_list).json()["names"] != []
    assert db_session.scalars(select(Subscriber)).all() == []


def test_bad_time_zone_and_address_answer_422_and_write_nothing(api, db_session, taxo):
    zone = api.post(f"{V1}/subscribers", json={"email": "ann@example.org", "timezone": "Mars/Base"})
    assert zone.status_code == 422
    assert "Mars/Base" in zone.json()["detail"]
    assert zone.json()["valid_list"] == "/api/v1/timezones"
    assert "Europe/Vienna" in api.get(zone.json()["valid_list"]).json()["names"]

    for bad in ("not-an-address", "ann@", "ann@exa mple.org"):
        response = api.post(f"{V1}/subscribers", json={"email": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"]
    assert db_session.scalars(select(Subscriber)).all() == []


def test_post_items_stores_them_and_the_event_alerts_immediate_subscribers(
    api, db_session, taxo, smtp_sink
):
    from digest.subscribers import FilterSpec, upsert_subscriber

    upsert_subscriber(
        db_session, "now@example.org", frequency="immediate", filters=[FilterSpec(["Policing"])]
    , smtputf8=False)
    upsert_subscriber(db_session, "weekly@example.org", filters=[FilterSpec(["Policing"])], smtputf8=False)
    db_session.commit()
    item = {
        "guid": "api-1",
        "url": "https://newsroom.example.org/api-1",
        "title": "New police academy opens",
        "summary": "<p>Forty cadets</p>",
        "published_at": utcnow().isoformat(),
        "content_type": "News",
        "themes": ["Policing"],
        "locations": ["OSCE Mission to Montenegro"],
    }
    first = api.post(f"{V1}/items", json=[item])
    assert first.status_code == 200, first.text
    assert len(first.json()["new_item_ids"]) == 1
    [message] = wait_for_mail(smtp_sink, 1)
    assert message.rcpt_tos == ["now@example.org"]
    assert "New police academy opens" in message.parsed().get_body(("plain",)).get_content()

    second = api.post(f"{V1}/items", json=item)  # the same item again: no new event
    assert second.json()["new_item_ids"] == [] and second.json()["unchanged"] == 1
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(2, timeout=1)

    bad = api.post(f"{V1}/items", json={"title": "x", "url": "javascript:alert(1)"})
    assert bad.status_code == 422 and "http(s)" in bad.json()["detail"]


def test_adhoc_run_dry_run_counts_then_sends_and_reports_progress(api, db_session, taxo, smtp_sink):
    from digest.subscribers import FilterSpec, upsert_subscriber

    for i in range(3):
        upsert_subscriber(db_session, f"r{i}@example.org", filters=[FilterSpec(["Policing"])], smtputf8=False)
    upsert_subscriber(db_session, "other@example.org", filters=[FilterSpec(["Elections"])], smtputf8=False)
    item = make_item(
        db_session,
        "Border police training",
        themes=[taxo.policing],
        ingested_at=utcnow() - timedelta(hours=1),
    )
    db_session.commit()

    dry = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True})
    assert dry.status_code == 201, dry.text
    assert dry.json()["dry_run"] is True and dry.json()["planned"] == 3
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=1)

    real = api.post(f"{V1}/runs", json={"item_ids": [item.id]})
    assert real.status_code == 201 and real.json()["planned"] == 3
    received = wait_for_mail(smtp_sink, 3)
    assert sorted(m.rcpt_tos[0] for m in received) == [f"r{i}@example.org" for i in range(3)]
    run = api.get(f"{V1}/runs/{real.json()['id']}").json()
    assert run["progress"]["sent"] == 3 and run["progress"]["total"] == 4
    assert run["status"] == "done"

    repeat = api.post(f"{V1}/runs", json={"item_ids": [item.id]})
    assert repeat.status_code == 200 and repeat.json()["created"] is False
    assert repeat.json()["id"] == real.json()["id"]

    assert api.post(f"{V1}/runs", json={}).status_code == 422  # no items chosen: refused
    assert (
        api.post(
            f"{V1}/runs",
            json={"published_from": "2025-10-10T00:00:00Z", "published_to": "2025-10-01T00:00:00Z"},
        ).status_code
        == 422
    )
    assert api.get(f"{V1}/runs/999999").status_code == 404


def test_a_dry_run_delivery_message_is_the_preview_of_an_adhoc_send(api, db_session, taxo,
                                                                     smtp_sink):
    from digest.subscribers import FilterSpec, upsert_subscriber

    upsert_subscriber(db_session, "ops-check@example.org", filters=[FilterSpec(["Policing"])], smtputf8=False)
    item = make_item(db_session, "Border <script>x</script> training", themes=[taxo.policing],
                     ingested_at=utcnow() - timedelta(hours=1))
    db_session.commit()
    dry = api.post(f"{V1}/runs", json={"item_ids": [item.id], "dry_run": True}).json()
    [row] = api.get(f"{V1}/deliveries", params={"run_id": dry["id"]}).json()["items"]
    assert row["status"] == "dry_run"

    message = api.get(f"{V1}/deliveries/{row['id']}/message")
    assert message.status_code == 200, message.text
    body = message.json()
    assert (body["delivery_id"], body["email"], body["status"], body["item_count"]) == (
        row["id"], "ops-check@example.org", "dry_run", 1)
    assert "Border &lt;script&gt;x&lt;/script&gt; training" in body["html"]
    assert "<script>x" not in body["html"] and "Border <script>x</script> training" in body["text"]
    assert body["subject"] and "\n" not in body["subject"]
    assert api.get(f"{V1}/deliveries/999999/message").status_code == 404
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=1)  # previewing sent nothing


def test_deliveries_filter_by_run_subscriber_status_and_time(api, db_session, taxo, smtp_sink):
    from digest.subscribers import FilterSpec, upsert_subscriber

    smtp_sink.script("bad@example.org", "550 5.1.1 No such user")
    good, _ = upsert_subscriber(db_session, "good@example.org", filters=[FilterSpec(["Policing"])], smtputf8=False)
    bad, _ = upsert_subscriber(db_session, "bad@example.org", filters=[FilterSpec(["Policing"])], smtputf8=False)
    item = make_item(db_session, "Item", themes=[taxo.policing], ingested_at=utcnow())
    db_session.commit()
    run_id = api.post(f"{V1}/runs", json={"item_ids": [item.id]}).json()["id"]
    wait_for_mail(smtp_sink, 1)

    def ids(**params):
        page = api.get(f"{V1}/deliveries", params=params).json()
        return sorted(d["subscriber_id"] for d in page["items"])

    assert ids(run_id=run_id) == sorted([good.id, bad.id])
    assert ids(status="failed") == [bad.id]
    assert ids(status="sent", subscriber_id=good.id) == [good.id]
    failed = api.get(f"{V1}/deliveries", params={"status": "failed"}).json()["items"][0]
    assert failed["smtp_code"] == 550 and failed["smtp_reply"].startswith("550 5.1.1")
    assert "at RCPT TO: 550 5.1.1" in failed["note"]  # ours, apart from the server's words
    sent = api.get(f"{V1}/deliveries", params={"status": "sent"}).json()["items"][0]
    assert sent["smtp_reply"] and sent["note"] is None
    hour_ago = (utcnow() - timedelta(hours=1)).isoformat()
    assert ids(since=hour_ago) == sorted([good.id, bad.id])
    assert ids(until=hour_ago) == []
    assert api.get(f"{V1}/deliveries", params={"status": "lost"}).status_code == 422


CSV = """email,frequency,timezone,weekday,hour,themes,locations,content_types,status
ann@example.org,weekly,Europe/Vienna,monday,8,Policing,,,active
bob@example.org,daily,Mars/Base,0,8,,,,active
carol@example.org,weekly,UTC,0,8,Astrology,,,active
not-an-address,weekly,UTC,0,8,,,,active
dan@example.org,immediate,UTC,0,8,,OSCE Mission to Montenegro,News,active
"""


def test_csv_import_reports_bad_rows_by_line_imports_the_rest_and_is_idempotent(
    api, db_session, taxo
):
    first = api.post(
        f"{V1}/subscribers/import", content=CSV.encode(), headers={"Content-Type": "text/csv"}
    )
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["added"], report["updated"]) == (2, 0)
    assert [e["line"] for e in report["errors"]] == [3, 4, 5]
    assert "Mars/Base" in report["errors"][0]["reason"]
    assert "Astrology" in report["errors"][1]["reason"]
    emails = sorted(db_session.scalars(select(Subscriber.email)))
    assert emails == ["ann@example.org", "dan@example.org"]

    second = api.post(
        f"{V1}/subscribers/import", content=CSV.encode(), headers={"Content-Type": "text/csv"}
    ).json()
    assert (second["added"], len(second["errors"])) == (0, 3)
    db_session.expire_all()
    assert sorted(db_session.scalars(select(Subscriber.email))) == emails

    exported = api.get(f"{V1}/subscribers/export")
    assert exported.headers["content-type"].startswith("text/csv")
    lines = exported.text.splitlines()
    assert lines[0].startswith("email,") and len(lines) == 3
    assert "dan@example.org,immediate" in exported.text

    assert (
        api.post(
            f"{V1}/subscribers/import", content=b"name\nx\n", headers={"Content-Type": "text/csv"}
        ).status_code
        == 422
    )
    assert (
        api.post(
            f"{V1}/subscribers/import",
            content=b"\xff\xfe\x00bad",
            headers={"Content-Type": "text/csv"},
        ).status_code
        == 422
    )


def test_out_of_range_ids_and_nul_characters_are_4xx_not_database_errors(api, taxo):
    assert api.get(f"{V1}/subscribers/{2**40}").status_code == 422
    assert api.get(f"{V1}/deliveries", params={"run_id": 2**63}).status_code == 422
    assert api.post(f"{V1}/subscribers", json={"email": "a\x00@example.org"}).status_code == 422
    assert api.post(f"{V1}/items", json={"title": "t\x00"}).status_code == 422
    assert (
        api.post(f"{V1}/runs", json={"published_from": "0001-01-01T00:00:00+05:00"}).status_code
        == 422
    )


def test_bounce_webhook_ties_a_dsn_to_its_delivery_and_suppresses_the_address(
        api, db_session, taxo, smtp_sink, web_settings):

    from digest.delivery import send_deliveries
    from digest.models import Delivery
    from digest.selection import plan_scheduled_run
    from tests.factories import T0, make_subscriber

    make_item(db_session, "x", themes=[taxo.policing], ingested_at=T0 - timedelta(hours=1))
    make_subscriber(db_session, "gone@example.net")
    db_session.commit()
    planned = plan_scheduled_run(db_session, "weekly", now=T0, everyone=True,
                                 settings=web_settings)
    db_session.commit()
    send_deliveries(planned.pending_ids, settings=web_settings)
    delivery = db_session.scalars(select(Delivery)).one()
    dsn = (TEST_DATA / "bounces/postfix-5.1.1-user-unknown.eml").read_text()
    dsn = dsn.replace("bounces+101@newsroom.example.org", f"bounces+{delivery.id}@newsroom.example.org")
    headers = {"Content-Type": "message/rfc822"}
    first = api.post(f"{V1}/bounces", content=dsn.encode(), headers=headers)
    again = api.post(f"{V1}/bounces", content=dsn.encode(), headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["result"] == "recorded" and first.json()["delivery_id"] == delivery.id
    assert again.json()["result"] == "duplicate"
    db_session.expire_all()
    assert db_session.scalars(select(Suppression.email)).all() == ["gone@example.net"]
    # Not a DSN (an autoreply, say): answered, counted as unmatched, nothing changes.
    other = api.post(f"{V1}/bounces", content=b"Subject: away\r\n\r\nback Monday", headers=headers)
    assert other.status_code == 200 and other.json()["result"] == "unmatched"
    assert api.post(f"{V1}/bounces", content=b"", headers=headers).status_code == 422
