"""The admin's Taxonomy page on SQLite and PostgreSQL: rename, merge and move forms and the
review list's file and dismiss buttons, each behind the admin's login and CSRF token; a
refusal is shown in the page."""

from __future__ import annotations

from sqlalchemy import select

from digest.models import Item, TermReview, Theme, term_review_items
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    client,
    csrf_of,
    db_session,
    taxo,
    web_settings,
)
from tests.integration.web.test_admin import admin, login  # noqa: F401 (fixtures)

PAGE = "/admin/taxonomy"


def post(admin, **fields):
    return admin.post(PAGE, data={"csrf": csrf_of(admin.get(PAGE).text)} | fields)


def test_the_page_needs_a_login_and_a_csrf_token(client, admin):
    admin.cookies.clear()
    assert client.get(PAGE).status_code == 401
    assert login(client).status_code == 302
    forged = client.post(PAGE, data={"csrf": "forged", "action": "dismiss", "name": "x"})
    assert forged.status_code == 403


def test_rename_merge_and_move_from_the_page_and_a_refusal_shown_in_it(admin, db_session,
                                                                       taxo):
    item = make_item(db_session, "one", themes=[taxo.gender])
    db_session.commit()
    page = post(admin, action="rename", facet="theme", name="Policing", new_name="Elections")
    assert page.status_code == 422 and "merge them" in page.text
    assert 'value="Policing"' in page.text  # what was typed is kept

    done = post(admin, action="rename", facet="theme", name="Policing", new_name="Police")
    assert done.status_code == 200 and "Renamed &#39;Policing&#39; to &#39;Police&#39;" in done.text
    assert post(admin, action="merge", facet="theme", names="Gender equality\n",
                into="Police").status_code == 200
    moved = post(admin, action="move", name="Police", from_facet="theme", to_facet="location")
    assert moved.status_code == 200 and "1 item(s) follow" in moved.text
    db_session.expire_all()
    assert [loc.name for loc in db_session.get_one(Item, item.id).locations] == ["Police"]
    assert db_session.scalars(select(Theme.name)).all() == ["Elections"]


def test_the_review_list_is_shown_with_file_and_dismiss_buttons_that_work(admin, db_session,
                                                                          taxo):
    item = make_item(db_session, "one")
    for slug in ("field-notes", "odd-tag"):
        review = TermReview(slug=slug, name=slug.replace("-", " ").capitalize(), seen_count=2,
                            reason="is not a known theme, location or content type",
                            source="feed")
        db_session.add(review)
        db_session.flush()
        db_session.execute(term_review_items.insert().values(review_id=review.id,
                                                             item_id=item.id))
    db_session.commit()
    page = admin.get(PAGE)
    assert page.status_code == 200 and "Field notes" in page.text and "Odd tag" in page.text
    filed = post(admin, action="file", name="Field notes", facet="content_type")
    assert filed.status_code == 200 and "1 item(s) tagged" in filed.text
    dismissed = post(admin, action="dismiss", name="Odd tag")
    assert dismissed.status_code == 200 and "Nothing to review." in dismissed.text
    db_session.expire_all()
    assert db_session.get_one(Item, item.id).content_type.name == "Field notes"
