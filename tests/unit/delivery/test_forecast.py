"""The forecast's arithmetic: durations at a rate, measured rates, a running run's ETA, the
words every edge prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digest.delivery.forecast import (
    MIN_MEASURED_MESSAGES,
    MIN_MEASURED_SECONDS,
    Eta,
    Forecast,
    Outcome,
    Throughput,
    Waiting,
    _sample_ids,
    estimate,
    eta_of,
    format_bytes,
    format_duration,
    rate_of,
    seconds_for,
    trusted,
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


def test_a_rate_is_trusted_only_over_enough_messages_and_seconds_of_sending():
    assert trusted(MIN_MEASURED_MESSAGES, MIN_MEASURED_SECONDS)
    assert not trusted(MIN_MEASURED_MESSAGES - 1, 3600.0)
    assert not trusted(100_000, MIN_MEASURED_SECONDS - 0.1)


def test_a_running_runs_eta_comes_from_its_own_rate_once_measured_over_enough_sending():
    now = utcnow()
    counts = {"sent": 300, "failed": 5, "cancelled": 5, "pending": 600, "skipped": 10,
              "total": 920}
    eta = eta_of(counts, now - timedelta(seconds=100), now)
    assert (eta.messages, eta.done, eta.sent) == (910, 310, 300)
    assert eta.rate == 3.0 and eta.seconds_left == 200.0
    assert eta.describe() == "310/910 (34%) at 3.0/s (this run so far), ETA 3 min 20 s"


def test_a_run_that_sent_too_little_to_measure_takes_the_measured_or_configured_rate_and_says_so():
    """Two messages in 0.2 s is no rate: an ETA from it was off by orders of magnitude."""
    now = utcnow()
    counts = {"sent": 2, "pending": 998, "total": 1000}
    first = now - timedelta(seconds=0.2)
    measured = Throughput(400.0, 1200, 3.0, "the runs sending in the last hour")
    eta = eta_of(counts, first, now, measured=measured, rate_limit=10.0)
    assert (eta.rate, eta.seconds_left) == (400.0, 998 / 400.0)
    assert "(measured over the runs sending in the last hour), ETA 2 s" in eta.describe()
    limited = eta_of(counts, first, now, rate_limit=10.0)
    assert limited.describe() == "2/1000 (0%) at 10.0/s (DIGEST_SEND_RATE), ETA 1 min 40 s"
    unknown = eta_of(counts, first, now)
    assert unknown.rate is None and unknown.seconds_left is None
    assert unknown.describe().startswith(
        "2/1000 (0%), ETA unknown: no measured rate yet, only 2 sent in under a second")


def test_a_run_that_sent_nothing_yet_has_no_eta():
    eta = eta_of({"pending": 5, "total": 5}, None, utcnow())
    assert eta.rate is None and eta.seconds_left is None
    assert "ETA unknown: no measured rate yet, nothing sent recently" in eta.describe()
    assert Eta(0, 0, 0, None, None).fraction == 1.0


def test_a_run_whose_deferred_rows_cannot_move_says_why_instead_of_an_eta():
    now = datetime(2026, 12, 7, 13, 5, tzinfo=UTC)
    until = now + timedelta(hours=1)
    waiting = Waiting(12, until, (("example.org", 12, until),), now)
    counts = {"sent": 388, "deferred": 12, "total": 400}
    eta = eta_of(counts, now - timedelta(seconds=100), now, waiting=waiting)
    assert eta.stalled and eta.seconds_left is None
    assert eta.describe() == (
        "388/400 (97%), not progressing: 12 deferred until 14:05 UTC (domain example.org paused)")


def test_a_run_with_some_rows_waiting_times_the_others_and_says_what_waits():
    now = datetime(2026, 12, 7, 13, 5, tzinfo=UTC)
    tomorrow = now + timedelta(days=1)
    waiting = Waiting(5, now + timedelta(minutes=2), (("example.org", 3, tomorrow),), now)
    counts = {"sent": 300, "pending": 95, "deferred": 5, "total": 400}
    eta = eta_of(counts, now - timedelta(seconds=100), now, waiting=waiting)
    assert not eta.stalled and eta.seconds_left == 95 / 3.0
    assert eta.describe() == (
        "300/400 (75%) at 3.0/s (this run so far), ETA 32 s; and 3 deferred until "
        "2026-12-08 13:05 UTC (domain example.org paused), 2 deferred to retry, the first at "
        "13:07 UTC")


def _forecast(**kw) -> Forecast:
    values = dict(run_id=7, recipients=120, messages=100, sampled=50, average_bytes=20_000,
                  size_error=None, rate_limit=10.0, seconds_at_limit=10.0,
                  measured=Throughput(4.0, 400, 100.0, "the last hour"),
                  seconds_at_measured=25.0, skipped=20)
    values |= kw
    seconds, basis = estimate(values["messages"], values["rate_limit"], values["measured"],
                              values.get("measured_seen"))
    return Forecast(**(values | {"estimate_seconds": seconds, "estimate_basis": basis}))


def test_the_forecast_says_counts_size_both_durations_and_which_rate_it_used():
    lines = _forecast().lines()
    assert lines[0] == "recipients: 120 (20 with nothing new, skipped)"
    assert lines[1] == "messages: 100"
    assert "19.5 KiB (of 50 built), about 1.9 MiB in all" in lines[2]
    assert lines[3] == "at the rate limit (DIGEST_SEND_RATE=10/s): 10 s"
    assert lines[4] == "at the throughput measured over the last hour (4.0/s, 400 sent): 25 s"
    assert lines[5] == ("estimate: 25 s, at the measured throughput (4.0/s over 400 messages "
                        "in 1 min 40 s, the last hour)")
    assert _forecast().as_dict()["total_bytes"] == 2_000_000
    # A measured rate faster than the limit allows: the limit holds it back.
    capped = _forecast(rate_limit=1.0, seconds_at_limit=100.0).lines()
    assert capped[5] == ("estimate: 1 min 40 s, at the rate limit (DIGEST_SEND_RATE=1/s; "
                         "slower than the measured 4.0/s)")


def test_the_forecast_says_when_there_is_no_limit_no_measure_or_no_size():
    lines = _forecast(rate_limit=0.0, seconds_at_limit=None, measured=None,
                      seconds_at_measured=None, average_bytes=None, sampled=0,
                      size_error="cannot read the DKIM key").lines()
    assert "no limit set (DIGEST_SEND_RATE=0)" in lines[3]
    assert "no measured rate yet, nothing sent recently to measure" in lines[4]
    assert "could not be built: cannot read the DKIM key" in lines[2]
    assert lines[5].startswith("estimate: none, no rate limit set and no measured rate yet")


def test_a_rate_measured_over_too_little_sending_is_not_used_and_the_forecast_says_so():
    seen = Throughput(0.0083, 2, 240.0, "the runs sending in the last hour")
    lines = _forecast(measured=None, seconds_at_measured=None, measured_seen=seen).lines()
    assert lines[4] == ("at the measured throughput: no measured rate yet, only 2 sent in "
                        "4 min 00 s recently (a rate is used once measured over 200 messages "
                        "and 10 s of sending)")
    assert lines[5].startswith("estimate: 10 s, at the rate limit (DIGEST_SEND_RATE=10/s; "
                               "no measured rate yet, only 2 sent")


def test_a_finished_run_says_what_it_came_to_instead_of_a_forecast():
    outcome = Outcome("done", sent=118, failed=2, skipped=30, cancelled=0, sending_seconds=4.2,
                      total_seconds=6.0)
    lines = _forecast(messages=0, outcome=outcome, recipients=150).lines()
    assert lines == ["recipients: 150",
                     "finished (done): sent 118, failed 2, skipped 30 (nothing new), cancelled 0",
                     "sending took 4 s (first to last message, 28.1/s)",
                     "planned to finished: 6 s"]
