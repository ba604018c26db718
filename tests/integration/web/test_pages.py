"""Subscriber pages over HTTP on SQLite and PostgreSQL, with the real local SMTP server:
subscribe (double opt-in), confirm, preferences, unsubscribe (button and RFC 8058), view."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from digest.models import Delivery, DigestRun, Subscriber, SuppressionReason, utcnow
from digest.tokens import links_for, make_token, subscriber_token
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    client,
    csrf_of,
    db_session,
    link_in,
    taxo,
    wait_for_mail,
    web_settings,
)

ANN = "ann@example.org"


def subscribe(client, email=ANN, **fields):
    form = {
        "csrf": csrf_of(client.get("/subscribe").text),
        "email": email,
        "mode": "chosen",
        "filter_count": "1",
        "f0-themes": ["Policing"],
        "f0-locations": ["OSCE Mission to Montenegro"],
        "frequency": "weekly",
        "weekday": "2",
        "hour": "9",
        "timezone": "Europe/Vienna",
        "group_by": "theme",
    }
    form.update(fields)
    return client.post("/subscribe", data=form)


def subscriber(session, email=ANN) -> Subscriber:
    session.expire_all()
    return session.scalars(select(Subscriber).where(Subscriber.email == email)).one()


def visible_text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_subscribe_creates_a_pending_subscriber_and_mails_only_a_confirmation(
    client, db_session, taxo, smtp_sink
):
    response = subscribe(client)
    assert response.status_code == 200
    assert "Check your inbox" in response.text
    sub = subscriber(db_session)
    assert sub.status == "pending"
    assert (sub.frequency, sub.weekday, sub.hour, sub.timezone) == ("weekly", 2, 9, "Europe/Vienna")
    assert [
        ([t.name for t in f.themes], [loc.name for loc in f.locations]) for f in sub.filters
    ] == [(["Policing"], ["OSCE Mission to Montenegro"])]
    [message] = wait_for_mail(smtp_sink, 1)
    mail = message.parsed()
    assert message.rcpt_tos == [ANN]
    assert "confirm" in mail["Subject"].lower()
    assert mail["List-Unsubscribe"] is None  # a transactional email, not a list message
    assert (
        "Policing, OSCE Mission to Montenegro, any type" in mail.get_body(("plain",)).get_content()
    )


def test_asking_again_makes_no_second_subscriber_and_answers_the_same(
    client, db_session, taxo, smtp_sink
):
    first = subscribe(client)
    again = subscribe(client, **{"f0-themes": ["Gender equality"]})
    new_address = subscribe(client, email="zed@example.org")
    assert first.status_code == again.status_code == new_address.status_code == 200
    assert visible_text(first.text) == visible_text(again.text)
    assert visible_text(new_address.text) == visible_text(first.text).replace(
        ANN, "zed@example.org"
    )
    assert len(db_session.scalars(select(Subscriber)).all()) == 2
    assert (
        subscribe(client, email="ANN@Example.org", **{"f0-themes": ["Gender equality"]}).status_code
        == 200
    )
    assert len(db_session.scalars(select(Subscriber)).all()) == 2

    # An active subscriber's choices are not changed by someone who only knows the address.
    sub = subscriber(db_session)
    sub.status = "active"
    db_session.commit()
    known = subscribe(client, **{"f0-themes": ["Elections"]})
    assert visible_text(known.text) == visible_text(first.text)
    sub = subscriber(db_session)
    assert sub.status == "active"
    assert [t.name for t in sub.filters[0].themes] == ["Gender equality"]


def test_suppressed_address_is_sent_nothing_and_sees_the_same_page(
    client, db_session, taxo, smtp_sink
):
    from digest.subscribers import suppress

    subscribe(client)
    wait_for_mail(smtp_sink, 1)
    suppress(db_session, ANN, SuppressionReason.hard_bounce)
    db_session.commit()
    smtp_sink.clear()
    response = subscribe(client)
    assert response.status_code == 200 and "Check your inbox" in response.text
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=1)
    assert subscriber(db_session).status == "suppressed"


def test_confirm_link_from_the_email_activates_the_subscription(
    client, db_session, taxo, smtp_sink
):
    subscribe(client)
    path = link_in(wait_for_mail(smtp_sink, 1)[0], "confirm")
    response = client.get(path)
    assert response.status_code == 200
    assert "You are subscribed" in response.text
    assert "every Wednesday at 09:00 (Europe/Vienna)" in visible_text(response.text)
    sub = subscriber(db_session)
    assert sub.status == "active" and sub.confirmed_at is not None


def test_subscribe_form_rejects_bad_input_with_a_clear_message_and_writes_nothing(
    client, db_session, taxo, smtp_sink
):
    cases = [
        ({"email": "not-an-address"}, "email address"),
        ({"f0-themes": ["Astrology"]}, "unknown theme: Astrology; valid themes are: Elections"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"mode": "chosen", "f0-themes": [], "f0-locations": []}, "choose at least one theme"),
    ]
    for fields, message in cases:
        response = subscribe(client, **fields)
        assert response.status_code == 422, fields
        summary = visible_text(response.text.split('class="error-summary"')[1].split("</div>")[0])
        assert message.lower() in summary.lower().replace("&#39;", "'"), summary
    assert db_session.scalars(select(Subscriber)).all() == []
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=0.5)


def test_subscribe_without_a_valid_form_token_is_refused(client, db_session, taxo):
    response = subscribe(client, csrf="forged")
    assert response.status_code == 403
    assert db_session.scalars(select(Subscriber)).all() == []


def test_preferences_page_saves_several_filters_and_previews_four_weeks(
    client, db_session, taxo, web_settings
):
    sub = _active(client, db_session)
    now = utcnow()
    make_item(
        db_session,
        "Police reform in Podgorica",
        themes=[taxo.policing],
        locations=[taxo.montenegro],
        ingested_at=now - timedelta(days=3),
    )
    make_item(
        db_session,
        "Old policing story",
        themes=[taxo.policing],
        ingested_at=now - timedelta(days=40),
    )
    make_item(
        db_session,
        "Election day in Belgrade",
        themes=[taxo.elections],
        locations=[taxo.serbia],
        ingested_at=now - timedelta(days=2),
    )
    db_session.commit()
    path = links_for(sub.id, web_settings)["manage_url"].removeprefix("https://digest.example.org")

    page = client.get(path)
    assert page.status_code == 200
    preview = page.text.split("What you would have got")[1]
    assert "Police reform in Podgorica" in preview
    assert "Old policing story" not in preview and "Election day" not in preview

    form = {
        "csrf": csrf_of(page.text),
        "action": "save",
        "mode": "chosen",
        "filter_count": "2",
        "f0-themes": ["Policing"],  # Policing anywhere
        "f1-locations": ["South-Eastern Europe"],  # + everything in the region
        "frequency": "daily",
        "weekday": "0",
        "hour": "7",
        "timezone": "Europe/Belgrade",
        "group_by": "location",
    }
    saved = client.post(path, data=form, follow_redirects=False)
    assert saved.status_code == 303
    page = client.get(saved.headers["location"])
    assert "Your preferences are saved" in page.text
    sub = subscriber(db_session)
    assert [
        (sorted(t.name for t in f.themes), sorted(loc.name for loc in f.locations))
        for f in sub.filters
    ] == [(["Policing"], []), ([], ["South-Eastern Europe"])]
    assert (sub.frequency, sub.hour, sub.timezone, sub.group_by, sub.status) == (
        "daily",
        7,
        "Europe/Belgrade",
        "location",
        "active",
    )
    preview = page.text.split("What you would have got")[1]
    assert "Police reform in Podgorica" in preview and "Election day in Belgrade" in preview

    # Remove the first filter, then choose everything.
    form |= {"csrf": csrf_of(page.text), "filter_count": "3", "f0-remove": "1"}
    client.post(path, data=form)
    assert [[loc.name for loc in f.locations] for f in subscriber(db_session).filters] == [
        ["South-Eastern Europe"]
    ]
    # "Everything" with a location still ticked means only that location (rule M5);
    # with nothing ticked, everything.
    client.post(path, data=form | {"mode": "everything"})
    assert [[loc.name for loc in f.locations] for f in subscriber(db_session).filters] == [
        ["South-Eastern Europe"]
    ]
    unticked = {k: v for k, v in form.items() if k != "f1-locations"}
    client.post(path, data=unticked | {"mode": "everything"})
    assert subscriber(db_session).filters == []


def test_preferences_reject_an_unknown_theme_naming_it_and_keep_the_old_choice(
    client, db_session, taxo, web_settings
):
    sub = _active(client, db_session)
    path = f"/preferences/{subscriber_token('manage', sub.id, web_settings)}"
    page = client.get(path)
    response = client.post(
        path,
        data={
            "csrf": csrf_of(page.text),
            "mode": "chosen",
            "filter_count": "1",
            "f0-themes": ["Knitting"],
            "timezone": "UTC",
        },
    )
    assert response.status_code == 422
    assert "Unknown theme: Knitting; valid themes are: Elections" in response.text
    assert [t.name for t in subscriber(db_session).filters[0].themes] == ["Policing"]


def test_unsubscribe_page_get_never_unsubscribes(client, db_session, taxo, web_settings):
    sub = _active(client, db_session)
    path = links_for(sub.id, web_settings)["unsubscribe_url"].removeprefix(
        "https://digest.example.org"
    )
    for _ in range(3):  # a mail scanner opening the link, a preview, the person
        page = client.get(path)
        assert page.status_code == 200
        assert '<button type="submit" class="button warning">Unsubscribe</button>' in page.text
    assert subscriber(db_session).status == "active"


def test_one_click_post_unsubscribes_at_once_and_cancels_planned_deliveries(
    client, db_session, taxo, web_settings
):
    sub = _active(client, db_session)
    run = DigestRun(kind="weekly", slot_key="weekly:test", cutoff=utcnow())
    db_session.add(run)
    db_session.flush()
    db_session.add_all(
        [
            Delivery(run_id=run.id, subscriber_id=sub.id, email=ANN, status="pending"),
            Delivery(run_id=_other_run(db_session), subscriber_id=sub.id, email=ANN, status="sent"),
        ]
    )
    db_session.commit()
    path = links_for(sub.id, web_settings)["unsubscribe_url"].removeprefix(
        "https://digest.example.org"
    )
    client.cookies.clear()
    response = client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        follow_redirects=False,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "location" not in response.headers
    sub = subscriber(db_session)
    assert sub.status == "unsubscribed" and sub.unsubscribed_at is not None
    statuses = sorted(d.status for d in db_session.scalars(select(Delivery)))
    assert statuses == ["cancelled", "sent"]
    # The button posts to the same URL: a second POST is harmless.
    assert client.post(path).status_code == 200


def test_unsubscribed_person_can_subscribe_again_from_the_preferences_page(
    client, db_session, taxo, web_settings
):
    sub = _active(client, db_session)
    links = links_for(sub.id, web_settings)
    client.post(links["unsubscribe_url"].removeprefix("https://digest.example.org"))
    path = links["manage_url"].removeprefix("https://digest.example.org")
    page = client.get(path)
    assert "You are unsubscribed" in page.text
    response = client.post(path, data={"csrf": csrf_of(page.text), "action": "resubscribe"})
    assert response.status_code == 200 and "You are subscribed again" in response.text
    assert subscriber(db_session).status == "active"


def test_view_in_browser_shows_the_digest_of_that_delivery(client, db_session, taxo, web_settings):
    sub = _active(client, db_session)
    item = make_item(
        db_session, "Community policing forum", themes=[taxo.policing], locations=[taxo.montenegro]
    )
    run = DigestRun(kind="weekly", slot_key="weekly:view", cutoff=utcnow())
    db_session.add(run)
    db_session.flush()
    delivery = Delivery(run_id=run.id, subscriber_id=sub.id, email=ANN, status="sent",
                        item_count=1, item_ids=[item.id], newest_item_at=item.ingested_at)
    db_session.add(delivery)
    db_session.commit()
    response = client.get(f"/view/{make_token('view', {'d': delivery.id}, web_settings)}")
    assert response.status_code == 200
    assert "Community policing forum" in response.text
    assert response.headers["Referrer-Policy"] == "no-referrer"
    missing = client.get(f"/view/{make_token('view', {'d': delivery.id + 99}, web_settings)}")
    assert missing.status_code == 404


def test_pages_are_labelled_for_assistive_technology(client, taxo):
    html = client.get("/subscribe").text
    ids = set(re.findall(r'<input[^>]+id="([^"]+)"', html)) | set(
        re.findall(r'<select[^>]+id="([^"]+)"', html)
    )
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    visible_inputs = {i for i in ids}
    assert visible_inputs <= labelled, visible_inputs - labelled
    assert html.count("<fieldset") == html.count("<legend")
    assert '<html lang="en">' in html and "<h1>" in html
    assert 'name="viewport"' in html
    assert "South-Eastern Europe" in html.split("Locations")[1]  # places grouped by region


# --- helpers ----------------------------------------------------------------------------------


def _active(client, db_session) -> Subscriber:
    from digest.subscribers import FilterSpec, upsert_subscriber

    sub, _ = upsert_subscriber(db_session, ANN, filters=[FilterSpec(["Policing"])], smtputf8=False)
    db_session.commit()
    return sub


def _other_run(db_session) -> int:
    run = DigestRun(kind="weekly", slot_key="weekly:earlier", cutoff=utcnow() - timedelta(days=7))
    db_session.add(run)
    db_session.flush()
    return run.id


# --- SMTPUTF8: an address with non-ASCII characters before the @ ------------------------


def error_summary(html: str) -> str:
    return visible_text(html.split('class="error-summary"')[1].split("</div>")[0])


def test_with_smtputf8_off_a_non_ascii_address_is_refused_naming_the_setting(
    client, db_session, taxo, smtp_sink
):
    response = subscribe(client, email="zoë@example.org")
    assert response.status_code == 422
    summary = error_summary(response.text).replace("&#39;", "'")
    assert "Internationalized characters before the @-sign are not supported" in summary
    assert "DIGEST_SMTPUTF8=true enables" in summary
    assert db_session.scalars(select(Subscriber)).all() == []
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=0.5)


def test_with_smtputf8_on_a_non_ascii_address_subscribes_and_gets_its_confirmation(
    client, db_session, taxo, smtp_sink, web_settings, monkeypatch
):
    # The app and get_settings() share this object: both see the setting.
    monkeypatch.setattr(web_settings, "smtputf8", True)
    response = subscribe(client, email="Zoe\u0308@Example.ORG")
    assert response.status_code == 200, response.text
    sub = subscriber(db_session, "zoë@example.org")  # lower-case, NFC, as stored
    assert sub.status == "pending"
    [message] = wait_for_mail(smtp_sink, 1)
    assert message.rcpt_tos == ["zoë@example.org"] and message.smtputf8
    assert message.parsed()["To"].addresses[0].addr_spec == "zoë@example.org"
    assert client.get(link_in(message, "confirm")).status_code == 200
    assert subscriber(db_session, "zoë@example.org").status == "active"
    # Asking again with another spelling of the same address finds the same subscriber.
    assert subscribe(client, email="ZOË@example.org").status_code == 200
    assert [s.email for s in db_session.scalars(select(Subscriber))] == ["zoë@example.org"]
