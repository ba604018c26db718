"""The taxonomy over the API on SQLite and PostgreSQL: rename, merge and move (items and
filters follow), the review list with file and dismiss, behind the bearer token; and a fresh
install seeded with the published taxonomy offers its names on the subscribe page."""

from __future__ import annotations

from sqlalchemy import select

from digest.models import Item, TermReview, term_review_items
from digest.taxonomy import seed_fresh
from tests.factories import make_item, make_subscriber
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    db_session,
    taxo,
    web_settings,
)

V1 = "/api/v1/taxonomy"


def test_rename_merge_and_move_over_the_api_and_their_refusals(api, db_session, taxo):
    item = make_item(db_session, "one", themes=[taxo.policing, taxo.gender])
    make_subscriber(db_session, "ann@example.org", {"themes": [taxo.gender]})
    db_session.commit()

    renamed = api.post(f"{V1}/theme/rename", json={"name": "policing", "new_name": "Police"})
    assert renamed.status_code == 200 and renamed.json() == {
        "facet": "theme", "name": "Police", "slug": "police"}
    onto = api.post(f"{V1}/theme/rename", json={"name": "Police", "new_name": "Elections"})
    assert onto.status_code == 422 and "merge them" in onto.json()["detail"]
    unknown = api.post(f"{V1}/theme/merge", json={"names": ["Nope"], "into": "Police"})
    assert unknown.status_code == 422 and unknown.json()["valid_list"] == f"{V1}/theme"

    merged = api.post(f"{V1}/theme/merge", json={"names": ["Gender equality"], "into": "Police"})
    assert merged.status_code == 200, merged.text
    moved = api.post(f"{V1}/move", json={"name": "Police", "from_facet": "theme",
                                         "to_facet": "location"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["items"], moved.json()["facet"]) == (1, "location")
    db_session.expire_all()
    assert [loc.name for loc in db_session.get_one(Item, item.id).locations] == ["Police"]
    assert "Police" in api.get(f"{V1}/location").json()["names"]
    # Behind the token, as every /api/v1 route.
    api.headers.pop("Authorization")
    assert api.post(f"{V1}/theme/rename", json={"name": "Elections",
                                                "new_name": "Votes"}).status_code == 401


def test_the_review_list_over_the_api_files_and_dismisses(api, db_session, taxo):
    item = make_item(db_session, "one")
    for slug in ("field-notes", "odd-tag"):
        review = TermReview(slug=slug, name=slug.replace("-", " ").capitalize(), seen_count=1,
                            reason="is not a known theme, location or content type",
                            source="feed")
        db_session.add(review)
        db_session.flush()
        db_session.execute(term_review_items.insert().values(review_id=review.id,
                                                             item_id=item.id))
    db_session.commit()
    listed = api.get(f"{V1}/review").json()["reviews"]
    assert [(r["slug"], r["items"]) for r in listed] == [("field-notes", 1), ("odd-tag", 1)]

    filed = api.post(f"{V1}/review/file", json={"name": "Field notes", "facet": "theme"})
    assert filed.status_code == 200 and filed.json()["items"] == 1
    assert api.post(f"{V1}/review/dismiss", json={"name": "Odd tag"}).status_code == 204
    missing = api.post(f"{V1}/review/dismiss", json={"name": "Odd tag"})
    assert missing.status_code == 404 and "not on the review list" in missing.text
    bad_facet = api.post(f"{V1}/review/file", json={"name": "x", "facet": "place"})
    assert bad_facet.status_code == 422
    assert api.get(f"{V1}/review").json() == {"reviews": []}
    db_session.expire_all()
    assert [t.name for t in db_session.get_one(Item, item.id).themes] == ["Field notes"]


def test_a_fresh_install_seeded_once_offers_the_published_names_on_the_subscribe_page(
        client, db_session):
    assert seed_fresh(db_session) > 0
    db_session.commit()
    assert seed_fresh(db_session) == 0  # a database that knows terms is left alone
    page = client.get("/subscribe")
    assert page.status_code == 200
    for name in ("Policing", "OSCE Mission to Serbia", "South-Eastern Europe", "Press release"):
        assert name in page.text
    assert db_session.scalars(select(Item)).all() == []  # before any ingest
