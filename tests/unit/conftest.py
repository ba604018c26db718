"""Unit tier: no services. Any socket connection or subprocess fails the test loudly, so a
test that reaches for PostgreSQL, Redis, an SMTP or HTTP server cannot pass here by luck."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


class ServiceUsedInUnitTest(AssertionError):
    """A unit test tried to reach a service; it belongs in tests/integration/ or tests/system/."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_connect(self: socket.socket, address: object, *args: object) -> None:
        raise ServiceUsedInUnitTest(f"unit test opened a connection to {address!r}")

    def refuse_process(self: subprocess.Popen, args: object, *rest: object, **kw: object) -> None:
        raise ServiceUsedInUnitTest(f"unit test started a process: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_process)
