"""Explain over the API (``GET /api/v1/subscribers/{id}/explain/{item_id}``) and in the admin
(the subscriber's and the delivery's "Explain" pages), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest

from digest.models import utcnow
from digest.selection import plan_scheduled_run
from digest.subscribers import FilterSpec, upsert_subscriber
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    ADMIN_PASSWORD,
    API_TOKEN,
    api,
    client,
    db_session,
    taxo,
    web_settings,
)


@pytest.fixture
def ann_and_item(db_session, taxo):
    ann, _ = upsert_subscriber(db_session, "ann@example.org", smtputf8=False,
                               filters=[FilterSpec(["Policing"], ["South-Eastern Europe"])])
    item = make_item(db_session, "Police reform", themes=[taxo.policing],
                     locations=[taxo.montenegro], ingested_at=utcnow() - timedelta(hours=1))
    other = make_item(db_session, "Elections", themes=[taxo.elections],
                      ingested_at=utcnow() - timedelta(hours=1))
    db_session.commit()
    return ann, item, other


def test_the_api_explains_facet_by_facet_with_sentences(api, ann_and_item):
    ann, item, other = ann_and_item
    body = api.get(f"/api/v1/subscribers/{ann.id}/explain/{item.id}").json()
    assert body["verdict"] == "in_next_digest" and body["matches"] is True
    (flt,) = body["filters"]
    assert [f["matched"] for f in flt["facets"]] == [True, True, True]
    assert flt["facets"][1]["hits"] == ["South-Eastern Europe"]
    assert body["window"]["position"] == "inside"
    assert body["sentences"][0].startswith(f"Item {item.id}")
    miss = api.get(f"/api/v1/subscribers/{ann.id}/explain/{other.id}").json()
    assert miss["verdict"] == "no_match"
    assert any("theme: wants Policing; the item has Elections: no match" in s
               for s in miss["sentences"])


def test_the_api_answers_404_for_an_unknown_reader_or_item_and_422_for_bad_input(
        api, client, ann_and_item):
    ann, item, _ = ann_and_item
    assert api.get(f"/api/v1/subscribers/999999/explain/{item.id}").status_code == 404
    missing = api.get(f"/api/v1/subscribers/{ann.id}/explain/999999")
    assert missing.status_code == 404 and "no item with id 999999" in missing.text
    assert api.get(f"/api/v1/subscribers/{ann.id}/explain/abc").status_code == 422
    assert api.get(f"/api/v1/subscribers/{ann.id}/explain/0").status_code == 422
    bad_date = api.get(f"/api/v1/subscribers/{ann.id}/explain/{item.id}?as_of=tomorrow")
    assert bad_date.status_code == 422
    client.headers.pop("Authorization")
    assert client.get(f"/api/v1/subscribers/{ann.id}/explain/{item.id}").status_code == 401


def test_the_api_as_of_moves_the_window(api, ann_and_item):
    ann, item, _ = ann_and_item
    earlier = (item.ingested_at - timedelta(minutes=5)).isoformat()
    body = api.get(f"/api/v1/subscribers/{ann.id}/explain/{item.id}",
                   params={"as_of": earlier}).json()
    assert body["verdict"] == "not_yet" and body["window"]["position"] == "after"


def _login(client):
    response = client.post("/admin/login", data={"username": "admin",
                                                 "password": ADMIN_PASSWORD},
                           follow_redirects=False)
    assert response.status_code == 302


def test_the_admin_explains_an_item_by_url_and_says_when_it_is_unknown(client, ann_and_item):
    ann, item, _ = ann_and_item
    url = f"/admin/subscriber/action/explain?pks={ann.id}"
    assert client.get(url, follow_redirects=False).status_code in (302, 401)
    _login(client)
    form = client.get(url)
    assert form.status_code == 200 and 'name="item"' not in form.text and "name=item" in form.text
    page = client.get(url + "&item=" + quote(item.url, safe=""))
    assert page.status_code == 200
    assert "Verdict: in_next_digest" in page.text and "South-Eastern Europe" in page.text
    unknown = client.get(url + "&item=" + quote("<script>x</script>"))
    assert unknown.status_code == 400 and "no item with URL or guid" in unknown.text
    assert "<script>x" not in unknown.text
    details = client.get(f"/admin/subscriber/details/{ann.id}")
    assert "/admin/subscriber/action/explain" in details.text


def test_the_admin_delivery_page_links_each_item_to_its_explanation(
        client, db_session, ann_and_item, web_settings):
    ann, item, _ = ann_and_item
    run = plan_scheduled_run(db_session, "weekly", everyone=True, settings=web_settings)
    db_session.commit()
    (delivery_id,) = run.pending_ids
    _login(client)
    page = client.get(f"/admin/delivery/action/explain?pks={delivery_id}")
    assert page.status_code == 200 and "Police reform" in page.text
    link = f"/admin/subscriber/action/explain?pks={ann.id}&amp;item={item.id}"
    assert link in page.text
    followed = client.get(link.replace("&amp;", "&"))
    assert "Verdict: on_its_way" in followed.text and "claimed it for you" in followed.text
    assert "/admin/delivery/action/explain" in client.get(
        f"/admin/delivery/details/{delivery_id}").text
    assert client.get("/admin/delivery/action/explain?pks=999999").status_code == 404
