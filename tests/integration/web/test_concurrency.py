"""Concurrent writes on a real uvicorn server, on SQLite and PostgreSQL: sign-ups of one
address at the same moment (a double click), API creates, CSV imports of overlapping rows and
preference changes race on the unique constraints, and must answer as the single request
would (2xx, 409 for an API create of an existing address, 429 past the email limit), never
500, leaving one row per address."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from digest import db
from digest.models import Subscriber, SubscriberFilter
from digest.settings import get_settings, reset_settings_cache
from digest.tokens import subscriber_token
from digest.web.pages import make_csrf, subject_for
from tests.factories import Taxo
from tests.helpers import free_port
from tests.integration.web.support import API_TOKEN

PARALLEL = 20
ALLOWED = {200, 429}


@pytest.fixture
def served(settings, smtp_sink, monkeypatch):
    """The app on uvicorn (SQLite and PostgreSQL), confirmations to the local SMTP server."""
    import uvicorn

    from digest.web import create_app

    monkeypatch.setenv("DIGEST_API_TOKEN", API_TOKEN)
    reset_settings_cache()
    s = get_settings()
    with db._sessionmaker(s.database_url)() as session:
        Taxo(session)
        session.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", s
    server.should_exit = True
    thread.join(10)
    reset_settings_cache()


def signup_form(settings, email: str) -> dict:
    return {"csrf": make_csrf(settings, "subscribe"), "email": email, "mode": "chosen",
            "filter_count": "1", "f0-themes": ["Policing"], "frequency": "weekly",
            "weekday": "2", "hour": "9", "timezone": "Europe/Vienna", "group_by": "theme"}


def run_at_once(base: str, jobs: list[list[dict]], parallel: int = PARALLEL) -> list[int]:
    """Each job is a group of requests sent at the same instant (a barrier per group);
    ``parallel`` requests in flight. Returns the status codes, in job order."""
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, timeout=60,
                                        headers={"Authorization": f"Bearer {API_TOKEN}"})
        return local.client

    def send(request: dict, barrier: threading.Barrier | None) -> int:
        c = client()
        if barrier is not None:
            barrier.wait(timeout=30)
        return c.request(**request).status_code

    with ThreadPoolExecutor(parallel) as pool:
        futures = []
        for group in jobs:
            barrier = threading.Barrier(len(group)) if len(group) > 1 else None
            futures += [pool.submit(send, request, barrier) for request in group]
        return [f.result() for f in futures]


def rows_per_address(settings) -> Counter:
    with db._sessionmaker(settings.database_url)() as session:
        return Counter(session.scalars(select(Subscriber.email)))


def filters_per_subscriber(settings) -> Counter:
    with db._sessionmaker(settings.database_url)() as session:
        return Counter(dict(session.execute(
            select(Subscriber.email, func.count(SubscriberFilter.id))
            .join(SubscriberFilter, SubscriberFilter.subscriber_id == Subscriber.id)
            .group_by(Subscriber.email)).all()))


def test_concurrent_signups_with_addresses_posted_twice_at_once_answer_2xx_or_429_one_row_each(
    served,
):
    base, s = served
    once = [f"once{n}@example.org" for n in range(160)]
    twice = [f"twice{n}@example.org" for n in range(20)]
    jobs = [[{"method": "POST", "url": "/subscribe", "data": signup_form(s, a)}] for a in once]
    # The pair of one address races between look-up and insert, as a double click does.
    jobs += [[{"method": "POST", "url": "/subscribe", "data": signup_form(s, a)}] * 2
             for a in twice]
    random.Random(7).shuffle(jobs)

    codes = Counter(run_at_once(base, jobs))

    assert set(codes) <= ALLOWED, f"answers {dict(codes)}"
    assert sum(codes.values()) == 200
    rows = rows_per_address(s)
    assert set(rows) == set(once) | set(twice)
    assert set(rows.values()) == {1}
    # Both requests of a pair wrote the same single filter; neither left a second one.
    assert set(filters_per_subscriber(s).values()) == {1}


def test_concurrent_api_creates_of_one_address_give_one_201_and_one_409(served):
    base, _ = served
    addresses = [f"api{n}@example.org" for n in range(20)]
    jobs = [[{"method": "POST", "url": "/api/v1/subscribers",
              "json": {"email": a, "filters": [{"themes": ["Policing"]}]}}] * 2
            for a in addresses]

    codes = run_at_once(base, jobs)

    for n, address in enumerate(addresses):
        assert sorted(codes[2 * n:2 * n + 2]) == [201, 409], address
    rows = rows_per_address(served[1])
    assert set(rows) == set(addresses) and set(rows.values()) == {1}


def test_concurrent_csv_imports_of_overlapping_rows_all_succeed_with_one_row_per_address(served):
    base, s = served
    header = "email,frequency,themes\n"
    everyone = [f"csv{n}@example.org" for n in range(40)]
    files = []
    for k in range(4):
        chosen = everyone[k * 5:k * 5 + 25]  # neighbouring files share 20 addresses
        random.Random(k).shuffle(chosen)  # in another order in each file
        files.append(header + "".join(f"{a},daily,Policing\n" for a in chosen))
    jobs = [[{"method": "POST", "url": "/api/v1/subscribers/import", "content": text,
              "headers": {"Content-Type": "text/csv",
                          "Authorization": f"Bearer {API_TOKEN}"}} for text in files]]

    codes = run_at_once(base, jobs)

    assert codes == [200, 200, 200, 200]
    rows = rows_per_address(s)
    assert set(rows) == set(everyone) and set(rows.values()) == {1}
    assert set(filters_per_subscriber(s).values()) == {1}


def test_two_preference_changes_of_one_subscriber_at_once_both_save_and_leave_one_filter_set(
    served,
):
    base, s = served
    with db._sessionmaker(s.database_url)() as session:
        from digest.subscribers import FilterSpec, upsert_subscriber

        subs = [upsert_subscriber(session, f"prefs{n}@example.org",
                                  filters=[FilterSpec(["Policing"])], smtputf8=False)[0] for n in range(10)]
        session.commit()
        ids = [sub.id for sub in subs]

    def change(sub_id: int, theme: str) -> dict:
        token = subscriber_token("manage", sub_id, s)
        return {"method": "POST", "url": f"/preferences/{token}",
                "data": {"csrf": make_csrf(s, subject_for(sub_id)), "mode": "chosen",
                         "filter_count": "1", "f0-themes": [theme], "frequency": "daily",
                         "weekday": "0", "hour": "7", "timezone": "UTC",
                         "group_by": "theme"}}

    jobs = [[change(i, "Elections"), change(i, "Gender equality")] for i in ids]
    codes = run_at_once(base, jobs)

    assert set(codes) == {303}, Counter(codes)
    assert set(filters_per_subscriber(s).values()) == {1}
