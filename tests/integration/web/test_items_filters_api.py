"""GET /api/v1/items with filters and the cursor, on SQLite and PostgreSQL: every filter
narrows as documented, walking the pages gives every item once, newest first, and a bad cursor
or an unknown name is a 422 that says what to do."""

from __future__ import annotations

from datetime import timedelta

from tests.factories import T0, make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    db_session,
    taxo,
    web_settings,
)

V1 = "/api/v1"


def titles(api, **params) -> list[str]:
    answer = api.get(f"{V1}/items", params=params)
    assert answer.status_code == 200, answer.text
    return [i["title"] for i in answer.json()["items"]]


def test_walking_the_pages_gives_every_item_once_newest_first(api, db_session, taxo):
    # Several items share a moment: the id breaks the tie, so none is lost between pages.
    made = [make_item(db_session, f"i{n}", published_at=T0 - timedelta(hours=n // 3))
            for n in range(11)]
    db_session.commit()
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = api.get(f"{V1}/items", params=params).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(i.id for i in made) and len(seen) == len(set(seen))
    expected = sorted(made, key=lambda i: (i.published_at, i.id), reverse=True)
    assert seen == [i.id for i in expected]


def test_items_are_filtered_by_facet_name_or_slug_dates_source_language_text_and_backfill(
        api, db_session, taxo):
    make_item(db_session, "Police training", themes=[taxo.policing], locations=[taxo.serbia],
              ctype=taxo.news, published_at=T0 - timedelta(days=3))
    make_item(db_session, "Gender 100% forum", themes=[taxo.gender],
              locations=[taxo.bishkek], ctype=taxo.press, published_at=T0 - timedelta(days=1))
    old = make_item(db_session, "Archive", themes=[taxo.policing], backfill=True,
                    published_at=T0 - timedelta(days=400))
    old.language = "fr"
    db_session.commit()

    assert titles(api, theme="policing") == ["Police training", "Archive"]
    assert titles(api, theme=["Policing", "gender-equality"]) == [
        "Gender 100% forum", "Police training", "Archive"]
    # A region takes its places, as in subscribers' filters.
    assert titles(api, location="South-Eastern Europe") == ["Police training"]
    assert titles(api, content_type="Press release") == ["Gender 100% forum"]
    assert titles(api, theme="policing", content_type="news") == ["Police training"]
    after = (T0 - timedelta(days=2)).isoformat()
    assert titles(api, published_after=after) == ["Gender 100% forum"]
    assert titles(api, published_before=after) == ["Police training", "Archive"]
    assert titles(api, q="POLICE") == ["Police training"]
    assert titles(api, q="100%") == ["Gender 100% forum"]  # % is a character, not a wildcard
    assert titles(api, q="summary of archive") == ["Archive"]
    assert titles(api, language="FR") == ["Archive"]
    assert titles(api, include_backfill="false") == ["Gender 100% forum", "Police training"]
    assert titles(api, source=12345) == []


def test_an_unknown_name_a_bad_cursor_and_a_naive_date_are_422_saying_what_to_do(
        api, db_session, taxo):
    unknown = api.get(f"{V1}/items", params={"theme": "Nope"})
    assert unknown.status_code == 422
    assert unknown.json()["valid_list"] == "/api/v1/taxonomy/theme"
    assert unknown.json()["invalid"] == ["Nope"]
    for cursor in ("not-a-cursor", "W10", "WyJ4IiwgMV0"):  # junk, [], ["x", 1]
        bad = api.get(f"{V1}/items", params={"cursor": cursor})
        assert bad.status_code == 422, cursor
        assert "bad cursor: give the next_cursor value" in bad.json()["detail"]
    too_many = api.get(f"{V1}/items", params={"theme": ["Policing"] * 51})
    assert too_many.status_code == 422
    naive = api.get(f"{V1}/items", params={"published_after": "2025-10-01T00:00:00"})
    assert naive.status_code == 422 and "has no time zone" in naive.text


def test_one_item_by_id_and_a_missing_one_is_a_404_pointing_to_the_list(api, db_session, taxo):
    item = make_item(db_session, "One", themes=[taxo.policing])
    db_session.commit()
    assert api.get(f"{V1}/items/{item.id}").json()["themes"] == ["Policing"]
    missing = api.get(f"{V1}/items/{item.id + 1000}")
    assert missing.status_code == 404
    assert "GET /api/v1/items lists them" in missing.json()["detail"]
