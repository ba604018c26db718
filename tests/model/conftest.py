"""Model tier: the reference model of docs/delivery-promise.md (promise.py, its unit tests
need no service) and the stateful test of the real system against it (SQLite and
PostgreSQL, the local SMTP server, the clock moved by time-machine). Shared fixtures live
in tests/conftest.py; how to run and replay it: tests/model/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.model)
