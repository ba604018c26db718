"""Integration tier: real SQLite and PostgreSQL, Redis, local SMTP (aiosmtpd) and HTTP
servers in the test process. Shared fixtures live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
