"""Issue 15, the delivery core's arithmetic with fakes and an injected clock: how long a
refused outcome write is retried, how long the final dot is awaited, and the note a stopped
process leaves. (The same behaviour on real databases and SMTP servers:
tests/integration/delivery/test_claims_and_journal.py, test_size_and_slow_servers.py.)"""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, InternalError, OperationalError

from digest.delivery.send import _describe, _flush_while_leased
from digest.delivery.transport import data_end_timeout
from digest.settings import Settings


class _Session:
    def rollback(self) -> None:
        pass


class _RefusingRecorder:
    """A recorder whose writes the database refuses ``refusals`` times."""

    def __init__(self, error: Exception, refusals: int):
        self.error, self.refusals, self.tries = error, refusals, 0
        self.waiting = [(1, {})]

    def flush(self) -> None:
        self.tries += 1
        if self.tries <= self.refusals:
            raise self.error
        self.waiting = []


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("error", [
    OperationalError("UPDATE", {}, Exception("server closed the connection")),
    InternalError("UPDATE", {}, Exception("cannot execute UPDATE in a read-only transaction")),
    DBAPIError("UPDATE", {}, Exception("could not extend file: No space left on device")),
])
def test_a_refused_outcome_write_is_retried_whatever_the_database_error(error):
    clock = _Clock()
    recorder = _RefusingRecorder(error, refusals=6)
    settings = Settings(lease_seconds=300)
    assert _flush_while_leased(_Session(), recorder, clock.now, settings,  # type: ignore[arg-type]
                               sleep=clock.sleep, monotonic=clock.monotonic)
    assert recorder.tries == 7 and recorder.waiting == []


def test_a_write_refused_for_the_whole_lease_is_given_up_before_the_task_s_time_limit():
    clock = _Clock()
    recorder = _RefusingRecorder(InternalError("UPDATE", {}, Exception("read-only")), 10**6)
    settings = Settings(lease_seconds=45)
    started = clock.now
    assert not _flush_while_leased(_Session(), recorder, started,  # type: ignore[arg-type]
                                   settings, sleep=clock.sleep, monotonic=clock.monotonic)
    waited = clock.now - started
    # Most of the lease (well past half of it, which is all it used to get), but before the
    # soft time limit at 0.8 of it.
    assert 0.6 * 45 <= waited < 0.8 * 45
    assert recorder.waiting  # left to lease recovery and the acceptance journal


def test_the_final_dot_waits_the_rfc_s_ten_minutes_within_half_the_lease():
    assert data_end_timeout(Settings(lease_seconds=1800)) == 600
    assert data_end_timeout(Settings(lease_seconds=300)) == 150
    # Never shorter than any other command's wait.
    assert data_end_timeout(Settings(lease_seconds=20, smtp_timeout=30)) == 30


def test_a_stopped_worker_process_leaves_a_note_an_operator_can_read():
    assert _describe(SystemExit(-241)) == \
        "the worker process was stopped while the batch was sending"
    assert _describe(ValueError("boom")) == "ValueError: boom"
