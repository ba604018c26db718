"""The admin's own pages over HTTP on SQLite and PostgreSQL: add a subscriber (the API's
validation, errors in the form), CSV import with its per-line report and export, and the
ad-hoc send (form, dry run with counts and one reader's message, confirm, progress)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from digest.models import Delivery, DigestRun, Subscriber, Suppression, utcnow
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    client,
    csrf_of,
    db_session,
    taxo,
    wait_for_mail,
    web_settings,
)
from tests.integration.web.test_admin import admin, login  # noqa: F401 (fixtures)

ADD = "/admin/subscriber-tools/add"
CSV = "/admin/subscriber-tools/csv"
SEND = "/admin/send"


def _csrf(admin, url: str) -> str:
    return csrf_of(admin.get(url).text)


def _add(admin, **fields):
    data = {"csrf": _csrf(admin, ADD), "email": "new@example.org", "frequency": "weekly",
            "timezone": "UTC", "weekday": "2", "hour": "7", "status": "active",
            "group_by": "theme", "filters": ""} | fields
    return admin.post(ADD, data=data, follow_redirects=False)


def _subscriber(db_session, email: str) -> Subscriber | None:
    db_session.expire_all()
    return db_session.scalars(select(Subscriber).where(Subscriber.email == email)).one_or_none()


def test_our_pages_answer_401_without_a_session(client):
    for url in (ADD, CSV, f"{CSV}/export", SEND, f"{SEND}/dry-run/1", f"{SEND}/run/1"):
        assert client.get(url).status_code == 401, url
    assert client.post(f"{SEND}/confirm/1", data={}).status_code == 401
    assert client.post(ADD, data={"email": "x@example.org"}).status_code == 401


def test_admin_adds_a_subscriber_with_two_filters(admin, db_session, taxo):
    response = _add(admin, email="New.Reader@Example.org", timezone="Europe/Vienna",
                    filters="themes=Policing;locations=OSCE Mission to Serbia\n\ntypes=News")
    assert response.status_code == 303
    sub = _subscriber(db_session, "new.reader@example.org")
    assert (sub.status, sub.weekday, sub.hour, sub.timezone) == ("active", 2, 7, "Europe/Vienna")
    assert sorted(
        ([t.name for t in f.themes], [loc.name for loc in f.locations],
         [c.name for c in f.content_types]) for f in sub.filters
    ) == [([], [], ["News"]), (["Policing"], ["OSCE Mission to Serbia"], [])]
    assert response.headers["location"].endswith(f"/admin/subscriber/details/{sub.id}")
    assert "Policing, OSCE Mission to Serbia, any type" in admin.get(
        response.headers["location"]).text


@pytest.mark.parametrize(("fields", "message"), [
    ({"email": "not-an-address"}, "not-an-address"),
    ({"email": "a@example.org\r\nBcc: b@example.org"}, "a@example.org"),
    ({"filters": "themes=Astrology"}, "Astrology"),
    ({"filters": "colour=blue"}, "filter line 1: bad filter part"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"hour": "25"}, "bad hour"),
    ({"frequency": "hourly"}, "bad frequency"),
], ids=["bad-address", "crlf-in-address", "unknown-theme", "bad-filter", "bad-zone", "bad-hour",
        "bad-frequency"])
def test_bad_subscriber_input_is_shown_in_the_form_and_nothing_is_written(
        admin, db_session, taxo, fields, message):
    response = _add(admin, **fields)
    assert response.status_code == 422
    error = re.search(r'id="form-error">(.*?)</div>', response.text, re.S).group(1)
    assert message in error.replace("&#39;", "'")
    # What was typed is kept in the form.
    if "filters" in fields:
        assert fields["filters"] in response.text
    assert db_session.scalar(select(Subscriber.id)) is None


def test_an_existing_address_is_refused_with_its_id(admin, db_session, taxo):
    assert _add(admin).status_code == 303
    again = _add(admin, email="NEW@example.org")
    assert again.status_code == 422
    sub = _subscriber(db_session, "new@example.org")
    assert f"exists (id {sub.id})" in again.text


def test_a_subscriber_added_as_suppressed_is_on_the_suppression_list(admin, db_session, taxo):
    assert _add(admin, status="suppressed").status_code == 303
    assert db_session.scalar(select(Suppression.email)) == "new@example.org"


def test_a_form_without_a_good_csrf_token_is_refused(admin, db_session, taxo):
    response = admin.post(ADD, data={"csrf": "forged", "email": "x@example.org"})
    assert response.status_code == 403 and "could not be verified" in response.text
    response = admin.post(SEND, data={"item_ids": "1"})
    assert response.status_code == 403
    assert db_session.scalar(select(Subscriber.id)) is None
    assert db_session.scalar(select(DigestRun.id)) is None


CSV_TEXT = (
    "email,frequency,themes,locations\r\n"
    "ann@example.org,daily,Policing,\r\n"
    "bad-address,weekly,,\r\n"
    "ann@example.org,daily,,OSCE Mission to Serbia\r\n"
    "cy@example.org,weekly,Astrology,\r\n"
    "dee@example.org,hourly,,\r\n"
    "eve@example.org,weekly,,\r\n"
)


def test_csv_import_reports_each_bad_line_and_imports_the_good_ones(admin, db_session, taxo):
    response = admin.post(CSV, data={"csrf": _csrf(admin, CSV)},
                          files={"file": ("people.csv", CSV_TEXT.encode(), "text/csv")})
    assert response.status_code == 200
    assert "2 added, 0 updated, 3 rejected" in response.text
    rejected = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td></tr>", response.text)
    assert [int(line) for line, _ in rejected] == [3, 5, 6]
    assert "Astrology" in rejected[1][1] and "bad frequency" in rejected[2][1]
    ann = _subscriber(db_session, "ann@example.org")
    assert ann.frequency == "daily" and len(ann.filters) == 2
    assert _subscriber(db_session, "eve@example.org") is not None

    # Pasted text works too, and importing the same lines again changes nothing.
    again = admin.post(CSV, data={"csrf": _csrf(admin, CSV), "text": CSV_TEXT})
    assert "0 added, 2 updated, 3 rejected" in again.text

    exported = admin.get(f"{CSV}/export")
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    lines = exported.text.splitlines()
    assert lines[0].startswith("email,frequency,timezone")
    assert sum(line.startswith("ann@example.org,daily") for line in lines) == 2


@pytest.mark.parametrize(("upload", "message"), [
    (b"", "choose a CSV file or paste its text"),
    (b"name,frequency\nann,weekly\n", "header row with at least"),
    (b"email\n\xff\xfe@example.org\n", "not UTF-8"),
], ids=["empty", "no-email-column", "not-utf8"])
def test_a_csv_that_cannot_be_read_is_refused_with_why(admin, db_session, taxo, upload, message):
    response = admin.post(CSV, data={"csrf": _csrf(admin, CSV)},
                          files={"file": ("people.csv", upload, "text/csv")})
    assert response.status_code == 422
    assert message in response.text.replace("&#39;", "'")
    assert db_session.scalar(select(Subscriber.id)) is None


@pytest.fixture
def readers(db_session, taxo):
    from digest.subscribers import FilterSpec, upsert_subscriber

    for email, frequency, spec in [("ann@example.org", "weekly", FilterSpec(["Policing"])),
                                   ("bob@example.org", "daily", FilterSpec(["Policing"])),
                                   ("cy@example.org", "weekly", FilterSpec(["Elections"]))]:
        upsert_subscriber(db_session, email, frequency=frequency, filters=[spec], smtputf8=False)
    item = make_item(db_session, "Police academy opens", themes=[taxo.policing],
                     locations=[taxo.serbia], ingested_at=utcnow())
    db_session.commit()
    return item


def _dry_run(admin, **fields):
    data = {"csrf": _csrf(admin, SEND)} | fields
    return admin.post(SEND, data=data, follow_redirects=False)


def test_adhoc_send_dry_run_preview_confirm_and_progress(admin, db_session, readers, smtp_sink):
    response = _dry_run(admin, item_ids=str(readers.id), themes="Policing",
                        frequencies=["weekly", "daily"])
    assert response.status_code == 303
    dry_url = response.headers["location"]
    page = admin.get(dry_url)
    assert page.status_code == 200
    assert re.search(r'id="recipients">2<', page.text)  # cy's filter does not match
    assert "ann@example.org" in page.text and "bob@example.org" in page.text
    forecast = re.search(r'id="forecast">(.*?)</dd>', page.text, re.S).group(1)
    assert "messages: 2" in forecast and "average size" in forecast and "rate limit" in forecast
    assert "Subject:" in page.text and "Police academy opens" in page.text
    assert smtp_sink.messages == []  # a dry run sends nothing

    # Another reader's message.
    bob_row = db_session.scalars(select(Delivery).where(Delivery.email == "bob@example.org")).one()
    assert "bob@example.org" in admin.get(dry_url, params={"reader": bob_row.id}).text

    dry_id = int(dry_url.rsplit("/", 1)[1])
    sent = admin.post(f"{SEND}/confirm/{dry_id}", data={"csrf": csrf_of(page.text)},
                      follow_redirects=False)
    assert sent.status_code == 303 and "/admin/send/run/" in sent.headers["location"]
    received = wait_for_mail(smtp_sink, 2)
    assert sorted(m.rcpt_tos[0] for m in received) == ["ann@example.org", "bob@example.org"]
    progress = admin.get(sent.headers["location"])
    assert re.search(r'data-status="sent">2<', progress.text)
    assert "none left to send" in progress.text and 'http-equiv="refresh"' not in progress.text

    # Confirming the same selection again plans nothing new.
    again = admin.post(f"{SEND}/confirm/{dry_id}", data={"csrf": csrf_of(page.text)})
    assert "was sent before" in again.text
    assert len(wait_for_mail(smtp_sink, 2)) == 2


def test_a_running_adhoc_run_page_refreshes_until_done(admin, db_session, readers, web_settings):
    from digest.selection import AdhocQuery, plan_adhoc_run

    planned = plan_adhoc_run(db_session, AdhocQuery(item_ids=(readers.id,)))
    db_session.commit()  # not enqueued: the rows stay pending
    page = admin.get(f"{SEND}/run/{planned.run_id}")
    assert 'http-equiv="refresh"' in page.text
    assert re.search(r'data-status="pending">2<', page.text) and "2 still to go" in page.text
    assert admin.get(f"{SEND}/run/999999").status_code == 404


@pytest.mark.parametrize(("fields", "message"), [
    ({}, "choose the items"),
    ({"item_ids": "1, two"}, "bad item id 'two'"),
    ({"published_from": "2025-13-01"}, "bad 'published from' date"),
    ({"published_from": "2025-10-02", "published_to": "2025-10-01"}, "swap them"),
    ({"item_ids": "1", "themes": "Astrology"}, "Astrology"),
    ({"item_ids": "1", "themes": "Policing\r\nAstro\rlogy"}, "Astro"),
    ({"item_ids": "1", "frequencies": ["hourly"]}, "bad frequency"),
    ({"item_ids": "1", "key": "two words"}, "bad key"),
], ids=["no-items", "bad-id", "bad-date", "dates-swapped", "unknown-theme", "crlf-in-theme",
        "bad-frequency", "bad-key"])
def test_bad_adhoc_input_is_shown_in_the_form_and_nothing_is_planned(
        admin, db_session, readers, fields, message):
    response = _dry_run(admin, **fields)
    assert response.status_code == 422
    error = re.search(r'id="form-error">(.*?)</div>', response.text, re.S).group(1)
    assert message in error.replace("&#39;", "'")
    assert db_session.scalar(select(DigestRun.id)) is None


def test_confirming_something_that_is_not_a_dry_run_is_refused(admin, db_session, readers):
    from digest.selection import AdhocQuery, plan_adhoc_run

    real = plan_adhoc_run(db_session, AdhocQuery(item_ids=(readers.id,)))
    db_session.commit()
    csrf = _csrf(admin, SEND)
    for run_id in (real.run_id, 999999):
        response = admin.post(f"{SEND}/confirm/{run_id}", data={"csrf": csrf})
        assert response.status_code == 422 and "no ad-hoc dry run" in response.text
    assert admin.get(f"{SEND}/dry-run/{real.run_id}").status_code == 404
