"""The admin UI over HTTP on SQLite and PostgreSQL: login from settings (argon2 hash), 401
everywhere without it, subscriber/run/delivery views, suppress/unsuppress and re-queue."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from digest.models import Delivery, DigestRun, Subscriber, Suppression, SuppressionReason, utcnow
from digest.settings import get_settings, reset_settings_cache
from digest.subscribers import FilterSpec, upsert_subscriber
from digest.web import create_app
from digest.web.admin import check_credentials, hash_password
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    ADMIN_PASSWORD,
    client,
    db_session,
    taxo,
    wait_for_mail,
    web_settings,
)

IDENTITIES = ["subscriber", "item", "digest-run", "delivery", "suppression", "complaint",
              "domain-pause"]


def login(client, password=ADMIN_PASSWORD, username="admin"):
    return client.post(
        "/admin/login", data={"username": username, "password": password}, follow_redirects=False
    )


@pytest.fixture
def admin(client):
    assert login(client).status_code == 302
    return client


@pytest.fixture
def people(db_session, taxo):
    ann, _ = upsert_subscriber(
        db_session,
        "ann@example.org",
        filters=[FilterSpec(["Policing"], ["OSCE Mission to Montenegro"])], smtputf8=False,
    )
    bob, _ = upsert_subscriber(db_session, "bob@example.org", filters=[], smtputf8=False)
    db_session.commit()
    return ann, bob


def _admin_urls(sub_id: int) -> list[str]:
    urls = ["/admin/", "/admin/logout-not-a-route"]
    for identity in IDENTITIES:
        urls += [
            f"/admin/{identity}/list",
            f"/admin/{identity}/details/{sub_id}",
            f"/admin/{identity}/export/csv",
            f"/admin/{identity}/list?search=ann",
        ]
    urls += [
        f"/admin/subscriber/action/suppress?pks={sub_id}",
        f"/admin/subscriber/action/unsuppress?pks={sub_id}",
        f"/admin/subscriber/action/preferences?pks={sub_id}",
        f"/admin/subscriber/action/erase?pks={sub_id}",
        f"/admin/delivery/action/requeue?pks={sub_id}",
        f"/admin/delivery/action/message?pks={sub_id}",
        f"/admin/suppression/action/unsuppress?pks={sub_id}",
    ]
    return urls


def test_every_admin_page_answers_401_without_a_session_and_shows_no_data(
    client, db_session, people
):
    ann, _ = people
    for url in _admin_urls(ann.id):
        response = client.get(url, follow_redirects=False)
        if url.endswith("not-a-route"):
            assert response.status_code == 404
            continue
        assert response.status_code == 401, (url, response.status_code)
        assert "ann@example.org" not in response.text
        assert "/admin/login" in response.text
    db_session.expire_all()
    assert db_session.get(Subscriber, ann.id).status == "active"  # the actions did not run
    assert client.get("/admin/login").status_code == 200


def test_wrong_credentials_are_refused_and_right_ones_open_the_admin(client, people):
    assert login(client, password="wrong").status_code == 400
    assert login(client, username="root").status_code == 400
    assert client.get("/admin/subscriber/list").status_code == 401
    response = login(client)
    assert response.status_code == 302
    cookie = response.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "httponly" in cookie and "secure" in cookie
    page = client.get("/admin/subscriber/list")
    assert page.status_code == 200
    assert "ann@example.org" in page.text
    assert "Policing, OSCE Mission to Montenegro, any type" in page.text
    assert "everything" in page.text  # bob has no filter
    client.get("/admin/logout")
    assert client.get("/admin/subscriber/list").status_code == 401


def test_without_a_password_hash_nobody_can_sign_in(settings, monkeypatch):
    monkeypatch.delenv("DIGEST_ADMIN_PASSWORD_HASH", raising=False)
    reset_settings_cache()
    s = get_settings()
    assert s.admin_password_hash is None
    assert not check_credentials(s, "admin", "")
    with TestClient(create_app(s), base_url="https://testserver") as c:
        assert login(c, password="").status_code == 400
        assert c.get("/admin/").status_code == 401


def test_password_check_uses_the_argon2_hash(web_settings):
    assert web_settings.admin_password_hash.startswith("$argon2")
    assert check_credentials(web_settings, "admin", ADMIN_PASSWORD)
    assert not check_credentials(web_settings, "admin", ADMIN_PASSWORD + " ")
    broken = web_settings.model_copy(update={"admin_password_hash": "not-a-hash"})
    assert not check_credentials(broken, "admin", ADMIN_PASSWORD)
    assert hash_password("x") != hash_password("x")  # salted


def test_subscribers_filter_by_status_and_search(admin, db_session, people):
    _, bob = people
    bob.status = "unsubscribed"
    db_session.commit()
    active = admin.get("/admin/subscriber/list", params={"status": "active"}).text
    assert "ann@example.org" in active and "bob@example.org" not in active
    found = admin.get("/admin/subscriber/list", params={"search": "bob"}).text
    assert "bob@example.org" in found and "ann@example.org" not in found


def test_suppress_and_unsuppress_actions_change_status_list_and_planned_mail(
    admin, db_session, people
):
    ann, _ = people
    run = DigestRun(kind="weekly", slot_key="weekly:admin", cutoff=utcnow())
    db_session.add(run)
    db_session.flush()
    db_session.add(Delivery(run_id=run.id, subscriber_id=ann.id, email=ann.email, status="pending"))
    db_session.commit()

    response = admin.get(f"/admin/subscriber/action/suppress?pks={ann.id}", follow_redirects=False)
    assert response.status_code == 302
    db_session.expire_all()
    assert db_session.get(Subscriber, ann.id).status == "suppressed"
    assert db_session.scalars(select(Suppression.email)).all() == ["ann@example.org"]
    assert db_session.scalars(select(Delivery.status)).all() == ["cancelled"]
    assert "ann@example.org" in admin.get("/admin/suppression/list").text

    admin.get(f"/admin/subscriber/action/unsuppress?pks={ann.id}")
    db_session.expire_all()
    assert db_session.get(Subscriber, ann.id).status == "active"
    assert db_session.scalars(select(Suppression)).all() == []


def test_the_complaints_view_lists_each_complaint_with_its_delivery(admin, db_session,
                                                                   web_settings):
    from digest.bounces import process_bounce_message
    from tests.bounce_reports import seed_sample_deliveries
    from tests.conftest import TEST_DATA

    seed_sample_deliveries(db_session)
    raw = (TEST_DATA / "complaints" / "yahoo-cfl-abuse.eml").read_bytes()
    process_bounce_message(db_session, raw, settings=web_settings)
    db_session.commit()
    page = admin.get("/admin/complaint/list")
    assert page.status_code == 200
    assert "gone@example.net" in page.text and "Yahoo!-Mail-Feedback/2.0" in page.text
    assert admin.get("/admin/suppression/list?search=gone").text.count("complaint") >= 1


def test_suppression_list_action_removes_an_address(admin, db_session, people):
    from digest.subscribers import suppress

    row = suppress(db_session, "bob@example.org", SuppressionReason.hard_bounce, "550 5.1.1")
    db_session.commit()
    admin.get(f"/admin/suppression/action/unsuppress?pks={row.id}")
    db_session.expire_all()
    assert db_session.scalars(select(Suppression)).all() == []
    assert (
        db_session.scalars(
            select(Subscriber.status).where(Subscriber.email == "bob@example.org")
        ).one()
        == "active"
    )


def test_admin_opens_the_subscribers_own_preferences_page(admin, people):
    ann, _ = people
    response = admin.get(
        f"/admin/subscriber/action/preferences?pks={ann.id}", follow_redirects=False
    )
    assert response.status_code == 302 and response.headers["location"].startswith("/preferences/")
    page = admin.get(response.headers["location"])
    assert page.status_code == 200 and "ann@example.org" in page.text


def test_runs_show_progress_counts_and_deliveries_filter_by_status_and_reply(
    admin, db_session, taxo, people, smtp_sink
):
    from tests.factories import make_item

    # Not a 5.7.x: that would defer the row and pause the domain (see the paused domains).
    smtp_sink.script("bob@example.org", "550 5.2.1 Mailbox disabled, not accepting messages")
    item = make_item(
        db_session,
        "Police cooperation",
        themes=[taxo.policing],
        locations=[taxo.montenegro],
        ingested_at=utcnow(),
    )
    db_session.commit()
    run = admin.post(
        "/api/v1/runs",
        json={"item_ids": [item.id]},
        headers={"Authorization": "Bearer test-api-token-0123456789"},
    ).json()
    wait_for_mail(smtp_sink, 1)
    runs = admin.get("/admin/digest-run/list").text
    assert "2 total: failed 1, sent 1" in runs
    assert "2 total: failed 1, sent 1" in admin.get(f"/admin/digest-run/details/{run['id']}").text

    failed = admin.get("/admin/delivery/list", params={"status": "failed"}).text
    assert "bob@example.org" in failed and "ann@example.org" not in failed
    by_reply = admin.get(
        "/admin/delivery/list", params={"smtp_reply": "5.2.1", "smtp_reply_op": "contains"}
    ).text
    assert "bob@example.org" in by_reply and "ann@example.org" not in by_reply
    # Our note is a column (and a filter) of its own: which step, which server.
    by_note = admin.get(
        "/admin/delivery/list", params={"note": "at RCPT TO", "note_op": "contains"}
    ).text
    assert "bob@example.org" in by_note and "ann@example.org" not in by_note


def test_requeue_action_sends_failed_deliveries_again(admin, db_session, taxo, people, smtp_sink):
    from tests.factories import make_item

    smtp_sink.script("bob@example.org", "552 5.3.4 Message too big for this system")
    item = make_item(
        db_session,
        "Second chance",
        themes=[taxo.policing],
        locations=[taxo.montenegro],
        ingested_at=utcnow(),
    )
    db_session.commit()
    admin.post(
        "/api/v1/runs",
        json={"item_ids": [item.id]},
        headers={"Authorization": "Bearer test-api-token-0123456789"},
    )
    wait_for_mail(smtp_sink, 1)
    failed = db_session.scalars(select(Delivery).where(Delivery.status == "failed")).one()
    sent = db_session.scalars(select(Delivery).where(Delivery.status == "sent")).one()

    admin.get(f"/admin/delivery/action/requeue?pks={failed.id},{sent.id}")
    received = wait_for_mail(smtp_sink, 2)
    assert [m.rcpt_tos for m in received] == [["ann@example.org"], ["bob@example.org"]]
    db_session.expire_all()
    assert db_session.get(Delivery, failed.id).status == "sent"
    assert db_session.get(Delivery, sent.id).attempts == 1  # a sent delivery is not sent twice


def test_password_guessing_is_stopped_after_ten_tries_a_minute(client, people):
    for _ in range(10):
        assert login(client, password="guess").status_code == 400
    assert login(client, password="guess").status_code == 429
    assert login(client).status_code == 429  # even the right password waits
    assert client.get("/admin/subscriber/list").status_code == 401


def test_paused_domains_are_listed_and_deleting_one_lifts_the_pause(client, db_session, people):
    from datetime import timedelta

    from digest.models import DomainPause

    _, bob = people
    until = utcnow() + timedelta(minutes=50)
    run = DigestRun(kind="weekly", slot_key="weekly:paused", cutoff=utcnow())
    db_session.add(run)
    db_session.flush()
    waiting = Delivery(run_id=run.id, subscriber_id=bob.id, email=bob.email, status="deferred",
                       attempts=1, next_attempt_at=until)
    db_session.add(waiting)
    db_session.flush()
    reason = "550 5.7.1 Unfortunately, messages from [198.51.100.7] weren't sent (S3150)"
    db_session.add(DomainPause(domain="example.org", paused_until=until, reason=reason,
                               delivery_id=waiting.id, created_at=utcnow()))
    db_session.commit()

    delete = "/admin/domain-pause/delete?pks=example.org"
    assert client.delete(delete).status_code == 401
    assert db_session.get(DomainPause, "example.org") is not None
    assert login(client).status_code == 302
    listed = client.get("/admin/domain-pause/list").text
    assert "example.org" in listed and "S3150" in listed
    assert client.get("/admin/domain-pause/details/example.org").status_code == 200
    assert client.get("/admin/domain-pause/create").status_code != 200  # read-only
    assert client.delete(delete).status_code == 200
    db_session.expire_all()
    assert db_session.get(DomainPause, "example.org") is None
    # Lifting the pause makes the delivery that waited for it due now.
    assert db_session.get(Delivery, waiting.id).next_attempt_at <= utcnow()


def test_admin_shows_a_dry_run_delivery_as_it_would_be_mailed(admin, db_session, taxo, people):
    from tests.factories import make_item

    item = make_item(db_session, "Police <b>cooperation</b> & training", themes=[taxo.policing],
                     locations=[taxo.montenegro], ingested_at=utcnow())
    db_session.commit()
    dry = admin.post("/api/v1/runs", json={"item_ids": [item.id], "dry_run": True},
                     headers={"Authorization": "Bearer test-api-token-0123456789"}).json()
    rows = admin.get("/api/v1/deliveries", params={"run_id": dry["id"]},
                     headers={"Authorization": "Bearer test-api-token-0123456789"}).json()
    [ann_row] = [d for d in rows["items"] if d["email"] == "ann@example.org"]
    assert ann_row["status"] == "dry_run"

    shown = admin.get(f"/admin/delivery/action/message?pks={ann_row['id']}")
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
    assert "Police &lt;b&gt;cooperation&lt;/b&gt; &amp; training" in shown.text
    assert "default-src 'none'" in shown.headers["content-security-policy"]
    missing = admin.get("/admin/delivery/action/message?pks=999999")
    assert missing.status_code == 404 and "no message" in missing.text


def test_erase_action_deletes_the_subscriber_and_keeps_others(admin, db_session, people):
    ann, bob = people
    response = admin.get(f"/admin/subscriber/action/erase?pks={ann.id}", follow_redirects=False)
    assert response.status_code == 302
    db_session.expire_all()
    assert db_session.scalars(select(Subscriber.email)).all() == ["bob@example.org"]
    assert "ann@example.org" not in admin.get("/admin/subscriber/list").text
