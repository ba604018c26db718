"""The promise's subscriber rules as the pages, the API and the admin keep them, over HTTP on
SQLite and PostgreSQL with the real local SMTP server: M5 (ticking means "only these"), R2
(nothing to a suppressed address), R3 (a suppressed status is listed), I2 (imports skip who
left, and say so)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from digest.models import Subscriber, Suppression, SuppressionReason
from digest.subscribers import erase_subscriber, find_subscriber, import_csv, suppress
from digest.web.pages import make_csrf
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    csrf_of,
    db_session,
    link_in,
    taxo,
    wait_for_mail,
    web_settings,
)
from tests.integration.web.test_admin import admin, login  # noqa: F401 (fixtures)
from tests.integration.web.test_pages import subscribe, subscriber

V1 = "/api/v1"
HINT = "Ticking any theme, location or type below means you get only"


def filters_of(sub: Subscriber) -> list[tuple[list[str], list[str], list[str]]]:
    return [([t.name for t in f.themes], [loc.name for loc in f.locations],
             [c.name for c in f.content_types]) for f in sub.filters]


def test_ticking_themes_with_everything_left_preselected_subscribes_to_only_those(
        client, db_session, taxo, smtp_sink):
    response = subscribe(client, **{"mode": "everything", "f0-locations": []})
    assert response.status_code == 200
    assert filters_of(subscriber(db_session)) == [(["Policing"], [], [])]
    # The confirmation says so too.
    text = wait_for_mail(smtp_sink, 1)[0].parsed().get_body(("plain",)).get_content()
    assert "Policing" in text
    # And the form says what ticking means, next to the choice it overrides.
    form = client.get("/subscribe").text
    assert 'value="everything" aria-describedby="mode-hint" checked' in form  # preselected
    assert HINT in form


def test_everything_with_nothing_ticked_subscribes_to_everything(client, db_session, taxo):
    subscribe(client, **{"mode": "everything", "f0-themes": [], "f0-locations": []})
    assert filters_of(subscriber(db_session)) == []


def test_the_preferences_page_reads_ticked_values_as_only_these_whatever_the_radio_says(
        client, db_session, taxo, smtp_sink):
    subscribe(client, **{"mode": "everything", "f0-themes": [], "f0-locations": []})
    confirm = link_in(wait_for_mail(smtp_sink, 1)[0], "confirm")
    page = client.get(confirm)
    manage = re.search(r'href="[^"]*(/preferences/[^"]+)"', page.text).group(1)
    prefs = client.get(manage).text
    client.post(manage, data={"csrf": csrf_of(prefs), "mode": "everything", "filter_count": "1",
                              "f0-types": ["News"], "frequency": "weekly", "weekday": "0",
                              "hour": "8", "timezone": "UTC", "group_by": "theme"})
    assert filters_of(subscriber(db_session)) == [([], [], ["News"])]
    assert HINT in prefs


def test_an_address_suppressed_by_an_import_and_erased_gets_no_confirmation_when_it_signs_up(
        client, db_session, taxo, smtp_sink, web_settings):
    import_csv(db_session, "email,status\nann@example.org,suppressed\n", smtputf8=False)
    db_session.commit()
    erase_subscriber(db_session, find_subscriber(db_session, "ann@example.org"))
    db_session.commit()
    response = subscribe(client)
    # The same page as anyone gets, but nothing is written and nothing is sent (rule R2).
    assert response.status_code == 200 and "Check your inbox" in response.text
    asked = client.post("/links", data={"csrf": make_csrf(web_settings, "links"),
                                        "email": "ann@example.org"})
    assert asked.status_code == 200 and "Check your inbox" in asked.text
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=1)
    db_session.expire_all()
    assert db_session.scalars(select(Subscriber)).all() == []


def test_api_writes_of_status_suppressed_list_the_address_and_an_update_lifts_it(
        api, db_session, taxo):
    created = api.post(f"{V1}/subscribers", json={"email": "ann@example.org",
                                                  "status": "suppressed"})
    assert created.status_code == 201, created.text
    db_session.expire_all()
    assert db_session.scalars(select(Suppression.email)).all() == ["ann@example.org"]
    # A new subscriber may not be created active on a suppressed address...
    erase = api.delete(f"{V1}/subscribers/{created.json()['id']}")
    assert erase.status_code == 204
    again = api.post(f"{V1}/subscribers", json={"email": "ann@example.org"})
    assert again.status_code == 422 and "suppression list" in again.text
    # ...but an operator's update of that one reader to active lifts the suppression (R5).
    bob = api.post(f"{V1}/subscribers", json={"email": "bob@example.org"}).json()
    suppress(db_session, "bob@example.org", SuppressionReason.hard_bounce, "550 5.1.1")
    db_session.commit()
    patched = api.patch(f"{V1}/subscribers/{bob['id']}", json={"status": "active"})
    assert patched.status_code == 200 and patched.json()["status"] == "active"
    db_session.expire_all()
    assert db_session.scalars(select(Suppression.email)).all() == ["ann@example.org"]


CSV_WITH_LEAVERS = (
    "email,frequency,status\n"
    "new@example.org,daily,active\n"
    "left@example.org,daily,active\n"
    "gone@example.org,daily,\n"
)


def _leavers(db_session):
    from digest.subscribers import unsubscribe, upsert_subscriber

    left, _ = upsert_subscriber(db_session, "left@example.org", smtputf8=False)
    unsubscribe(db_session, left)
    suppress(db_session, "gone@example.org", SuppressionReason.hard_bounce, "550 5.1.1")
    db_session.commit()


def test_api_import_reports_the_lines_it_skipped_with_the_reason(api, db_session, taxo):
    _leavers(db_session)
    response = api.post(f"{V1}/subscribers/import", content=CSV_WITH_LEAVERS,
                        headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["added"], body["updated"], body["errors"]) == (1, 0, [])
    assert [(s["line"], "unsubscribed" in s["reason"] or "suppression list" in s["reason"])
            for s in body["skipped"]] == [(3, True), (4, True)]
    db_session.expire_all()
    assert find_subscriber(db_session, "left@example.org").status == "unsubscribed"


def test_admin_import_shows_the_skipped_lines(admin, db_session, taxo):
    _leavers(db_session)
    page = admin.get("/admin/subscriber-tools/csv").text
    response = admin.post("/admin/subscriber-tools/csv",
                          data={"csrf": csrf_of(page), "text": CSV_WITH_LEAVERS})
    assert response.status_code == 200
    assert "1 added, 0 updated, 2 skipped, 0 rejected" in response.text
    skipped = response.text.split('id="import-skipped"')[1]
    lines = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td></tr>", skipped)
    assert [int(line) for line, _ in lines] == [3, 4]
    assert "left@example.org unsubscribed" in lines[0][1]
    assert "gone@example.org is on the suppression list" in lines[1][1]


def test_a_suppressed_reader_who_unsubscribes_by_link_stays_unsubscribed_once_lifted(
        client, db_session, taxo, web_settings):
    from digest.subscribers import unsuppress
    from digest.tokens import links_for
    from tests.integration.web.test_pages import _active

    sub = _active(client, db_session)
    suppress(db_session, sub.email, SuppressionReason.admin)
    db_session.commit()
    path = links_for(sub.id, web_settings)["unsubscribe_url"].removeprefix(
        "https://digest.example.org")
    assert client.post(path, content=b"List-Unsubscribe=One-Click", headers={
        "Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
    db_session.expire_all()
    assert subscriber(db_session).status == "suppressed"  # R3: still listed
    unsuppress(db_session, sub.email)
    db_session.commit()
    # Rule R5: they asked to leave; lifting the suppression does not subscribe them again.
    assert subscriber(db_session).status == "unsubscribed"
