"""System tier: the product as it runs: Celery workers, the CLI as a process, a browser,
SpamAssassin, the deployment files, the benchmarks. Shared fixtures live in tests/conftest.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.system)


def require_tool(name: str, found: str | None, install: str) -> str:
    """The tool's path; without it, skip locally but fail in CI (CI set), which installs it."""
    if found:
        return found
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must run this test, not skip it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, driven by Playwright (no browser download)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return require_tool("Debian's chromium", path if Path(path).exists() else None,
                        "apt-get install chromium")


@pytest.fixture(scope="session")
def spamassassin() -> str:
    return require_tool("Debian's spamassassin", shutil.which("spamassassin"),
                        "apt-get install spamassassin")
