"""Rule H3 at the web edges, on SQLite and PostgreSQL with the storing SMTP server: the API's
``also_in_digests`` and the admin's "Also include in digests" box reach the run's parameters;
unticked, the send claims what it carried; ticked, it claims nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from digest.models import DigestRun, utcnow
from digest.subscribers import FilterSpec, upsert_subscriber
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    csrf_of,
    db_session,
    taxo,
    wait_for_mail,
    web_settings,
)
from tests.integration.web.test_admin import admin  # noqa: F401 (fixtures)
from tests.ledger import claims

V1 = "/api/v1"
SEND = "/admin/send"


@pytest.fixture
def item(db_session, taxo):
    for email in ("ann@example.org", "bob@example.org"):
        upsert_subscriber(db_session, email, filters=[FilterSpec(["Policing"])], smtputf8=False)
    made = make_item(db_session, "Border police training", themes=[taxo.policing],
                     ingested_at=utcnow() - timedelta(hours=1))
    db_session.commit()
    return made


def _claimed(db_session) -> set[tuple[int, int]]:
    db_session.expire_all()
    return {(claim.subscriber_id, claim.item_id) for claim in claims(db_session)}


def test_the_apis_also_in_digests_claims_nothing_and_its_default_claims_what_it_sent(
        api, db_session, item, smtp_sink):
    assert "also_in_digests" in api.get("/openapi.json").json()["components"]["schemas"][
        "RunIn"]["properties"]
    also = api.post(f"{V1}/runs", json={"item_ids": [item.id], "also_in_digests": True})
    assert also.status_code == 201, also.text
    assert also.json()["params"]["also_in_digests"] is True
    wait_for_mail(smtp_sink, 2)
    assert _claimed(db_session) == set()

    plain = api.post(f"{V1}/runs", json={"item_ids": [item.id]})
    assert plain.status_code == 201 and plain.json()["id"] != also.json()["id"]  # another key
    assert plain.json()["params"]["also_in_digests"] is False
    wait_for_mail(smtp_sink, 4)
    assert {item_id for _, item_id in _claimed(db_session)} == {item.id}
    assert len(_claimed(db_session)) == 2


@pytest.mark.parametrize(("ticked", "words"), [
    (True, "Also included in digests"), (False, "Left out of digests")])
def test_the_admins_also_in_digests_box_reaches_the_run_it_sends(
        admin, db_session, item, smtp_sink, ticked, words):
    fields = {"csrf": csrf_of(admin.get(SEND).text), "item_ids": str(item.id)}
    if ticked:
        fields["also_in_digests"] = "on"
    dry = admin.post(SEND, data=fields, follow_redirects=False)
    assert dry.status_code == 303
    page = admin.get(dry.headers["location"])
    assert re.search(rf'id="also-in-digests">{words}', page.text)
    dry_id = int(dry.headers["location"].rsplit("/", 1)[1])
    sent = admin.post(f"{SEND}/confirm/{dry_id}", data={"csrf": csrf_of(page.text)},
                      follow_redirects=False)
    assert sent.status_code == 303
    wait_for_mail(smtp_sink, 2)
    run_id = int(sent.headers["location"].rsplit("/", 1)[1])
    assert db_session.get_one(DigestRun, run_id).params["also_in_digests"] is ticked
    assert len(_claimed(db_session)) == (0 if ticked else 2)
