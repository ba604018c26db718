"""Bad-input corpus, JSON API bodies: wrong types, huge arrays, over-long strings, unknown
taxonomy and broken JSON answer 422 naming the field (and the limit or the bad value), never
a 500, and write nothing. On SQLite and PostgreSQL, through the real app."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from digest.models import DigestRun, Item, Subscriber
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    api,
    client,
    db_session,
    taxo,
    web_settings,
)

V1 = "/api/v1"
SUB = {"email": "ann@example.org"}
ITEM = {"title": "Fine item", "guid": "fine-1"}
RUN = {"published_from": "2025-10-01T00:00:00Z"}


def many(n: int, value: str = "Policing") -> list[str]:
    return [f"{value} {i}" for i in range(n)]


CASES = [
    # subscribers
    pytest.param("POST", "/subscribers", {"email": 123}, ["email", "valid string"],
                 id="subscriber-email-not-a-string"),
    pytest.param("POST", "/subscribers", {"email": "a" * 310 + "@example.org"},
                 ["email", "at most 320 characters"], id="subscriber-email-too-long"),
    pytest.param("POST", "/subscribers", SUB | {"weekday": "someday"},
                 ["weekday", "valid integer", "someday"], id="subscriber-weekday-not-a-number"),
    pytest.param("POST", "/subscribers", SUB | {"hour": 24},
                 ["hour", "less than or equal to 23"], id="subscriber-hour-out-of-range"),
    pytest.param("POST", "/subscribers", SUB | {"frequency": "hourly"},
                 ["frequency", "hourly", "weekly"], id="subscriber-unknown-frequency"),
    pytest.param("POST", "/subscribers", SUB | {"timezone": "Z" * 65},
                 ["timezone", "at most 64 characters"], id="subscriber-timezone-too-long"),
    pytest.param("POST", "/subscribers", SUB | {"nickname": "Ann"},
                 ["nickname", "Extra inputs are not permitted"], id="subscriber-unknown-field"),
    pytest.param("POST", "/subscribers", SUB | {"filters": {"themes": ["Policing"]}},
                 ["filters", "valid list"], id="subscriber-filters-not-a-list"),
    pytest.param("POST", "/subscribers", SUB | {"filters": [{}] * 21},
                 ["filters", "at most 20 items"], id="subscriber-too-many-filters"),
    pytest.param("POST", "/subscribers", SUB | {"filters": [{"themes": many(101)}]},
                 ["themes", "at most 100 items"], id="filter-too-many-themes"),
    pytest.param("POST", "/subscribers", SUB | {"filters": [{"locations": ["L" * 201]}]},
                 ["locations", "at most 200 characters"], id="filter-name-too-long"),
    pytest.param("POST", "/subscribers", SUB | {"filters": [{"content_types": [""]}]},
                 ["content_types", "at least 1 character"], id="filter-empty-name"),
    pytest.param("POST", "/subscribers", SUB | {"filters": [{"themes": "Policing"}]},
                 ["themes", "valid list"], id="filter-themes-a-string"),
    pytest.param("POST", "/subscribers", SUB | {"filters": [{"themes": ["Astrology", "Tarot"]}]},
                 ["Astrology", "Tarot", "/api/v1/taxonomy/theme"], id="filter-unknown-themes"),
    pytest.param("POST", "/subscribers", [SUB] * 10_000, ["valid dictionary"],
                 id="subscriber-body-a-huge-array"),
    # items
    pytest.param("POST", "/items", {"guid": "no-title"}, ["title", "Field required"],
                 id="item-without-title"),
    pytest.param("POST", "/items", ITEM | {"title": "T" * 2001},
                 ["title", "at most 2000 characters"], id="item-title-too-long"),
    pytest.param("POST", "/items", ITEM | {"summary": "S" * 20_001},
                 ["summary", "at most 20000 characters"], id="item-summary-too-long"),
    pytest.param("POST", "/items", ITEM | {"themes": many(51)},
                 ["themes", "at most 50 items"], id="item-too-many-themes"),
    pytest.param("POST", "/items", ITEM | {"locations": "Vienna"},
                 ["locations", "valid list"], id="item-locations-a-string"),
    pytest.param("POST", "/items", ITEM | {"published_at": "yesterday"},
                 ["published_at", "valid datetime"], id="item-date-not-a-date"),
    pytest.param("POST", "/items", ITEM | {"published_at": "3000-01-01T00:00:00Z"},
                 ["published_at", "between the years 1900 and 2999"], id="item-date-year-3000"),
    pytest.param("POST", "/items", [ITEM | {"guid": f"g{i}"} for i in range(501)],
                 ["between 1 and 500 items"], id="items-more-than-500"),
    pytest.param("POST", "/items", [], ["between 1 and 500 items"], id="items-empty-list"),
    pytest.param("POST", "/items", [ITEM, {"guid": "second", "title": 7}],
                 ["title", "valid string"], id="items-one-bad-in-a-batch"),
    # runs
    pytest.param("POST", "/runs", {"item_ids": list(range(1, 1002))},
                 ["item_ids", "at most 1000 items"], id="run-too-many-item-ids"),
    pytest.param("POST", "/runs", {"item_ids": ["first"]}, ["item_ids", "valid integer"],
                 id="run-item-id-not-a-number"),
    pytest.param("POST", "/runs", RUN | {"slot_key": "has space"}, ["slot_key", "pattern"],
                 id="run-slot-key-with-a-space"),
    pytest.param("POST", "/runs", RUN | {"frequencies": ["hourly"]},
                 ["frequencies", "hourly"], id="run-unknown-frequency"),
    pytest.param("POST", "/runs", RUN | {"themes": ["Astrology"]},
                 ["Astrology", "/api/v1/taxonomy/theme"], id="run-unknown-theme"),
    pytest.param("POST", "/runs", {"published_from": "2025-10-05T00:00:00Z",
                                   "published_to": "2025-10-01T00:00:00Z"},
                 ["published_from is after published_to"], id="run-dates-swapped"),
]


def stored(db_session) -> tuple[int, int, int]:
    db_session.rollback()
    return tuple(
        db_session.scalar(select(func.count()).select_from(model))
        for model in (Subscriber, Item, DigestRun)
    )


@pytest.mark.parametrize(("method", "path", "body", "fragments"), CASES)
def test_a_bad_api_body_answers_422_naming_the_field_and_writes_nothing(
    api, db_session, taxo, method, path, body, fragments
):
    response = api.request(method, f"{V1}{path}", json=body)
    assert response.status_code == 422, response.text[:500]
    text = json.dumps(response.json())  # detail, plus valid_list for unknown names
    for fragment in fragments:
        assert fragment in text, text[:1000]
    assert stored(db_session) == (0, 0, 0)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"email": "ann@example.org",', id="truncated-json"),
        pytest.param(b"\xff\xfe{}", id="json-not-utf8"),
    ],
)
def test_a_body_that_is_no_json_answers_422_not_500(api, db_session, taxo, content):
    response = api.post(f"{V1}/subscribers", content=content,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "json" in response.text.lower()
    assert stored(db_session) == (0, 0, 0)
