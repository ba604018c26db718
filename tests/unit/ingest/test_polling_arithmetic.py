"""When a source is polled next, and what a server's Retry-After and Cache-Control say: pure
arithmetic, the clock passed in."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest

from digest.ingest.polling import JITTER, backoff_wait, healthy_wait, next_poll

fetch = importlib.import_module("digest.ingest.fetch")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_a_healthy_source_waits_its_interval_or_the_max_age_when_longer():
    assert healthy_wait(900, None) == 900
    assert healthy_wait(900, 60) == 900
    assert healthy_wait(900, 3600) == 3600


def test_back_off_doubles_from_the_interval_per_consecutive_failure_up_to_the_cap():
    assert [backoff_wait(60, n, cap=600) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]
    assert backoff_wait(900, 1000, cap=21600) == 21600  # no overflow after many failures


def test_retry_after_is_a_floor_over_the_back_off_even_past_the_cap():
    assert backoff_wait(60, 1, cap=600, retry_after=120) == 120
    assert backoff_wait(60, 4, cap=600, retry_after=120) == 480
    assert backoff_wait(60, 1, cap=600, retry_after=3600) == 3600
    assert backoff_wait(60, 1, cap=600, retry_after=10**9) == 7 * 86400  # read as a week


def test_jitter_adds_at_most_a_tenth_and_never_subtracts():
    assert next_poll(NOW, 600, rand=lambda: 0.0) == NOW + timedelta(seconds=600)
    assert next_poll(NOW, 600, rand=lambda: 0.999999) <= NOW + timedelta(seconds=600 * 1.1)
    assert JITTER == 0.1


@pytest.mark.parametrize("value,seconds", [
    ("120", 120),
    ("0", 0),
    (" 30 ", 30),
    ("Mon, 02 Mar 2026 09:02:00 GMT", 120),
    ("Mon, 02 Mar 2026 08:00:00 GMT", 0),  # already past
    (None, None),
    ("", None),
    ("soon", None),
    ("-5", None),
])
def test_retry_after_reads_seconds_or_an_http_date(value, seconds):
    assert fetch.parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("value,seconds", [
    ("max-age=300", 300),
    ("public, max-age=7200, must-revalidate", 7200),
    ('max-age="60"', 60),
    ("s-maxage=10", None),
    ("no-store, max-age=300", None),
    (None, None),
])
def test_cache_control_max_age(value, seconds):
    assert fetch.parse_max_age(value) == seconds
