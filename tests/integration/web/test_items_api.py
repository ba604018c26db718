"""Reading items over the API (GET /api/v1/items, /items/{id}), on SQLite and PostgreSQL: the
place error messages send an operator to look an item up."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.factories import T0, make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    db_session,
    taxo,
    web_settings,
)

V1 = "/api/v1"


def test_items_are_listed_newest_first_up_to_the_limit_and_read_one_by_id(api, db_session,
                                                                          taxo):
    old = make_item(db_session, "old", themes=[taxo.policing], locations=[taxo.serbia],
                    ctype=taxo.news, ingested_at=T0 - timedelta(days=2))
    new = make_item(db_session, "new", ingested_at=T0 - timedelta(days=1))
    db_session.commit()
    page = api.get(f"{V1}/items")
    assert page.status_code == 200, page.text
    assert [i["title"] for i in page.json()["items"]] == ["new", "old"]
    assert [i["id"] for i in api.get(f"{V1}/items", params={"limit": 1}).json()["items"]] == [
        new.id]
    one = api.get(f"{V1}/items/{old.id}").json()
    assert (one["title"], one["themes"], one["locations"], one["content_type"]) == (
        "old", ["Policing"], ["OSCE Mission to Serbia"], "News")
    assert api.get(f"{V1}/items", params={"limit": 0}).status_code == 422


def test_an_unknown_item_is_a_404_and_the_explain_error_points_to_a_route_that_exists(
        api, db_session, taxo):
    from digest.errors import ValidationError
    from digest.selection.explain import find_item

    missing = api.get(f"{V1}/items/999999")
    assert missing.status_code == 404 and "no item with id 999999" in missing.text
    with pytest.raises(ValidationError) as caught:
        find_item(db_session, "999999")
    method, path = str(caught.value).rsplit("see ", 1)[1].split()
    assert (method, path) == ("GET", "/api/v1/items")
    assert api.get(path).status_code == 200
