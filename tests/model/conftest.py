"""Model tier: the reference model of docs/delivery-promise.md (promise.py, its unit tests
need no service) and the stateful test of the real system against it (SQLite and
PostgreSQL, the local SMTP server, the clock moved by time-machine). Shared fixtures live
in tests/conftest.py; how to run and replay it: tests/model/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.settings import get_settings, reset_settings_cache

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.model)


@pytest.fixture
def harness(db_url, tmp_path, monkeypatch, smtp_sink, request):
    """The system under test on ``db_url`` (SQLite and PostgreSQL), with the settings the
    model assumes (promise.Config): catch-up 48 h, send-by 24 h, debounce 10 min."""
    from tests.model.test_promise_machine import BASE, TOKEN

    for key, value in {
        "DATABASE_URL": db_url, "VAR_DIR": str(tmp_path / "var"), "BROKER_URL": "",
        "SECRET_KEY": "test-secret-key-not-for-production-0123", "PUBLIC_BASE_URL": BASE,
        "API_TOKEN": TOKEN, "CATCH_UP_HOURS": "48", "SEND_BY_HOURS": "24",
        "MAX_ITEMS_PER_DIGEST": "500", "EMAIL_RATE_LIMIT": "100000/minute",
        "SOFT_BOUNCE_THRESHOLD": "100000", "ALERT_DEBOUNCE_MINUTES": "10",
        "FIRST_DIGEST_LOOKBACK_DAYS": "7", "MAX_ITEM_AGE_DAYS": "30",
    }.items():
        monkeypatch.setenv(f"DIGEST_{key}", value)
    reset_settings_cache()
    settings = get_settings()
    template = (request.getfixturevalue("sqlite_template") if db_url.startswith("sqlite")
                else None)
    from tests.model.test_promise_machine import Harness

    h = Harness(settings, smtp_sink, db_url, template)
    yield h
    h.stop_clock()
    reset_settings_cache()


@pytest.fixture
def promise_machine(harness):
    """The state machine class bound to this test's database, mail server and clock: what a
    replay of printed steps calls ``PromiseMachine`` (tests/model/README.md)."""
    from tests.model.test_promise_machine import PromiseMachine

    return type("PromiseMachine", (PromiseMachine,), {"harness": harness})
