"""The admin's Sources page over HTTP, on SQLite and PostgreSQL: health in words (failing,
stale, paused, new) with the last error, last success and next poll; the add form with the
registry's refusals shown in it; pause, resume and remove buttons; CSRF and login required."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select

from digest.ingest import registry
from digest.models import Source, utcnow
from tests.integration.web.sources_support import ERROR, PUBLIC_FEED, failing_source
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    client,
    csrf_of,
    db_session,
    web_settings,
)
from tests.integration.web.test_admin import admin, login  # noqa: F401 (fixtures)

PAGE = "/admin/sources"


def _row(html: str, source_id: int) -> str:
    match = re.search(rf'<tr id="source-{source_id}">(.*?)</tr>', html, re.S)
    assert match, f"no row for source {source_id}"
    return match.group(1)


def _add(admin, **fields):
    data = {"csrf": csrf_of(admin.get(PAGE).text), "url": PUBLIC_FEED, "kind": "feed",
            "every": "15m", "content_type": "", "location": "", "language": "",
            "backfill_pages": "0"} | fields
    return admin.post(PAGE, data=data)


def _sources(db_session) -> list[Source]:
    db_session.expire_all()
    return list(db_session.scalars(select(Source).order_by(Source.id)))


def test_the_page_shows_a_failing_and_a_stale_source_with_their_errors_in_words(
        admin, db_session, web_settings):
    now = utcnow()
    failing = failing_source(db_session, web_settings, since=now - timedelta(hours=2),
                             last_success=now - timedelta(hours=3), now=now)
    stale = failing_source(db_session, web_settings, url="https://93.184.215.14/old.xml",
                           since=now - timedelta(hours=web_settings.source_stale_hours + 5),
                           last_success=now - timedelta(days=3), now=now)
    fresh = registry.add_source(db_session, "https://93.184.215.14/new.xml",
                                settings=web_settings)
    db_session.commit()
    page = admin.get(PAGE)
    assert page.status_code == 200
    row = _row(page.text, failing.id)
    assert "health-failing" in row and ">Failing<" in row
    assert ERROR in row and "(HTTP 503)" in row
    assert "5 failure(s) in a row" in row
    assert failing.last_success_at.strftime("%Y-%m-%d %H:%M UTC") in row
    assert "Pause<" in row and "Poll now<" in row and "Remove<" in row
    stale_row = _row(page.text, stale.id)
    assert "health-stale" in stale_row and "Stale: failing too long" in stale_row
    assert ERROR in stale_row
    new_row = _row(page.text, fresh.id)
    assert "New: not polled yet" in new_row and "never" in new_row


def test_admin_adds_a_source_and_it_is_listed_as_new(admin, db_session):
    response = _add(admin, kind="listing", every="1h", location="OSCE Mission to Serbia",
                    language="sr", backfill_pages="2")
    assert response.status_code == 200, response.text
    [source] = _sources(db_session)
    assert (source.url, source.kind, source.every_seconds, source.default_location,
            source.default_language, source.backfill_pages) == (
        PUBLIC_FEED, "listing", 3600, "OSCE Mission to Serbia", "sr", 2)
    assert f"Added source {source.id}" in response.text
    assert "New: not polled yet" in _row(response.text, source.id)


def test_a_refused_source_is_shown_in_the_form_with_what_was_typed_and_nothing_added(
        admin, db_session):
    for fields, words in (({"url": "http://127.0.0.1:6379/"}, "private or loopback"),
                          ({"every": "5s"}, "under a minute"),
                          ({"backfill_pages": "many"}, "bad backfill pages"),
                          ({"kind": "pigeon"}, "unknown source kind")):
        response = _add(admin, **fields)
        assert response.status_code == 422, fields
        assert words in response.text
        for value in fields.values():
            assert f'value="{value}"' in response.text or value == "pigeon"
    assert _sources(db_session) == []
    _add(admin)
    again = _add(admin, every="1h")
    assert again.status_code == 422 and "already registered" in again.text
    assert len(_sources(db_session)) == 1


def test_pause_resume_and_remove_buttons_change_the_source(admin, db_session, web_settings):
    source = registry.add_source(db_session, PUBLIC_FEED, settings=web_settings)
    db_session.commit()

    def press(action: str):
        csrf = csrf_of(admin.get(PAGE).text)
        return admin.post(f"{PAGE}/{source.id}/{action}", data={"csrf": csrf})

    paused = press("pause")
    assert paused.status_code == 200 and f"Paused source {source.id}" in paused.text
    assert ">Paused<" in _row(paused.text, source.id) and "Resume<" in paused.text
    assert _sources(db_session)[0].paused
    resumed = press("resume")
    assert f"Resumed source {source.id}" in resumed.text
    assert not _sources(db_session)[0].paused
    removed = press("remove")
    assert f"Removed source {source.id}" in removed.text
    assert _sources(db_session) == [] and "No source is registered yet" in removed.text


def test_actions_need_a_good_csrf_token_and_name_a_source_that_exists(
        admin, db_session, web_settings):
    source = registry.add_source(db_session, PUBLIC_FEED, settings=web_settings)
    db_session.commit()
    forged = admin.post(f"{PAGE}/{source.id}/remove", data={"csrf": "forged"})
    assert forged.status_code == 403
    assert admin.post(PAGE, data={"csrf": "forged", "url": PUBLIC_FEED}).status_code == 403
    csrf = csrf_of(admin.get(PAGE).text)
    missing = admin.post(f"{PAGE}/4242/pause", data={"csrf": csrf})
    assert missing.status_code == 404 and "no source" in missing.text
    unknown = admin.post(f"{PAGE}/{source.id}/explode", data={"csrf": csrf})
    assert unknown.status_code == 422 and "unknown source action" in unknown.text
    assert len(_sources(db_session)) == 1


def test_the_sources_page_needs_a_session(client, db_session):
    assert client.get(PAGE).status_code == 401
    assert client.post(PAGE, data={"url": PUBLIC_FEED}).status_code == 401
    assert client.post(f"{PAGE}/1/remove", data={}).status_code == 401
    assert db_session.scalar(select(func.count()).select_from(Source)) == 0
