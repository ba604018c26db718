"""The forecast's arithmetic: durations at a rate, measured rates, a running run's ETA, the
words every edge prints."""

from __future__ import annotations

from datetime import timedelta

from digest.delivery.forecast import (
    Eta,
    Forecast,
    Throughput,
    _sample_ids,
    eta_of,
    format_bytes,
    format_duration,
    rate_of,
    seconds_for,
)
from digest.models import utcnow


def test_duration_at_a_rate_is_messages_over_rate_and_unlimited_has_none():
    assert seconds_for(1000, 10.0) == 100.0
    assert seconds_for(1000, 0.0) is None


def test_durations_read_as_seconds_minutes_or_hours():
    assert format_duration(0.2) == "under a second"
    assert format_duration(42) == "42 s"
    assert format_duration(200) == "3 min 20 s"
    assert format_duration(7500) == "2 h 05 min"


def test_sizes_read_in_bytes_kib_or_mib():
    assert format_bytes(900) == "900 B"
    assert format_bytes(20_480) == "20.0 KiB"
    assert format_bytes(3 * 1024 * 1024) == "3.0 MiB"


def test_one_message_or_no_time_span_measures_no_rate():
    assert rate_of(1, 10.0) is None
    assert rate_of(10, 0.0) is None
    assert rate_of(10, 4.0) == 2.5


def test_the_size_sample_is_spread_over_the_whole_run_not_its_first_readers():
    ids = list(range(1000))
    sample = _sample_ids(ids, 50)
    assert len(sample) == 50 and sample[0] == 0 and sample[-1] >= 980
    assert _sample_ids([1, 2, 3], 50) == [1, 2, 3]


def test_a_running_runs_eta_comes_from_its_own_rate_and_ignores_empty_digests():
    now = utcnow()
    counts = {"sent": 30, "failed": 5, "cancelled": 5, "pending": 60, "skipped": 10,
              "total": 110}
    eta = eta_of(counts, now - timedelta(seconds=10), now)
    assert (eta.messages, eta.done, eta.sent) == (100, 40, 30)
    assert eta.rate == 3.0 and eta.seconds_left == 20.0
    assert eta.describe() == "40/100 (40%) at 3.0/s, ETA 20 s"


def test_a_run_that_sent_nothing_yet_has_no_eta():
    eta = eta_of({"pending": 5, "total": 5}, None, utcnow())
    assert eta.rate is None and eta.seconds_left is None
    assert "ETA unknown" in eta.describe()
    assert Eta(0, 0, 0, None, None).fraction == 1.0


def _forecast(**kw) -> Forecast:
    values = dict(run_id=7, recipients=120, messages=100, sampled=50, average_bytes=20_000,
                  size_error=None, rate_limit=10.0, seconds_at_limit=10.0,
                  measured=Throughput(4.0, 400, 100.0, "the last hour"),
                  seconds_at_measured=25.0)
    return Forecast(**(values | kw))


def test_the_forecast_says_counts_size_and_both_durations():
    lines = _forecast().lines()
    assert lines[0] == "recipients: 120 (20 with nothing new, skipped)"
    assert lines[1] == "messages: 100"
    assert "19.5 KiB (of 50 built), about 1.9 MiB in all" in lines[2]
    assert lines[3] == "at the rate limit (DIGEST_SEND_RATE=10/s): 10 s"
    assert lines[4] == "at the throughput measured over the last hour (4.0/s, 400 sent): 25 s"
    assert _forecast().as_dict()["total_bytes"] == 2_000_000


def test_the_forecast_says_when_there_is_no_limit_no_measure_or_no_size():
    lines = _forecast(rate_limit=0.0, seconds_at_limit=None, measured=None,
                      seconds_at_measured=None, average_bytes=None, sampled=0,
                      size_error="cannot read the DKIM key").lines()
    assert "no limit set (DIGEST_SEND_RATE=0)" in lines[3]
    assert "unknown, nothing sent recently" in lines[4]
    assert "could not be built: cannot read the DKIM key" in lines[2]
