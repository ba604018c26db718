"""db.wait_until_reachable: how long a command waits for a database that refuses connections,
with the clock and the sleep injected (a closed port refuses at once; no server needed)."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy.exc import OperationalError

from digest import db


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres?connect_timeout=2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_refusing_database_is_tried_until_the_wait_runs_out_then_its_error_is_raised():
    clock, told = FakeClock(), []
    with pytest.raises(OperationalError):
        db.wait_until_reachable(_closed_port_url(), 30, told.append, clock.sleep, clock)
    assert 25 <= sum(clock.slept) <= 30  # it waited, and never past the limit
    assert clock.slept[:4] == [0.5, 1.0, 2.0, 4.0] and max(clock.slept) == 5.0  # backing off
    assert 2 <= len(told) <= 4  # told once, then every ten seconds, not at every try
    assert all("refused" in line or "connect" in line for line in told)


def test_no_wait_means_one_try():
    clock, told = FakeClock(), []
    with pytest.raises(OperationalError):
        db.wait_until_reachable(_closed_port_url(), 0, told.append, clock.sleep, clock)
    assert clock.slept == [] and told == []


def test_a_reachable_database_returns_at_once(tmp_path):
    clock = FakeClock()
    db.wait_until_reachable(f"sqlite:///{tmp_path / 'x.db'}", 30, None, clock.sleep, clock)
    assert clock.slept == []
