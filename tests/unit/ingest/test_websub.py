"""WebSub's pure parts: the X-Hub-Signature check, when a pushing source is still polled,
when a lease is renewed, and the beat's entry (ADR 0035)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from digest.ingest.websub import (
    QUIET_AFTER,
    SAFETY_NET,
    is_pushing,
    poll_every,
    renew_margin,
    signature_matches,
)
from digest.models import Source, SourceKind, WebSubState

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "per-subscription-secret"
BODY = b"<rss version='2.0'><channel><title>t</title></channel></rss>"


def signed(method: str, secret: str = SECRET, body: bytes = BODY) -> str:
    return f"{method}={hmac.new(secret.encode(), body, method).hexdigest()}"


@pytest.mark.parametrize("method", ["sha1", "sha256", "sha384", "sha512"])
def test_a_signature_in_any_registered_method_with_our_secret_matches(method):
    assert signature_matches(SECRET, BODY, signed(method))
    assert signature_matches(SECRET, BODY, signed(method).upper().replace(method.upper(),
                                                                           method))


@pytest.mark.parametrize("header", [
    None, "", "sha256=", "sha256", "=abc", "md5=" + hashlib.md5(BODY).hexdigest(),
    signed("sha256", secret="another secret"), signed("sha256", body=BODY + b" "),
    signed("sha256")[:-2], "sha256=not-hex-at-all",
])
def test_a_missing_forged_truncated_or_unknown_signature_does_not_match(header):
    assert not signature_matches(SECRET, BODY, header)


def source(**websub) -> Source:
    defaults = dict(url="https://newsroom.example.org/feed.xml", kind=SourceKind.feed,
                    every_seconds=900, paused=False, hub_url="https://hub.example.org/",
                    websub_state=WebSubState.verified,
                    websub_requested_at=NOW - timedelta(days=1),
                    websub_lease_until=NOW + timedelta(days=9),
                    websub_last_push_at=NOW - timedelta(hours=1))
    return Source(**{**defaults, **websub})


def test_a_source_whose_hub_pushes_is_polled_only_as_a_safety_net():
    assert is_pushing(source(), now=NOW)
    assert poll_every(source(), now=NOW) == SAFETY_NET.total_seconds()
    # A source polled more rarely than the safety net keeps its own interval.
    assert poll_every(source(every_seconds=86400), now=NOW) == 86400


@pytest.mark.parametrize("why, websub", [
    ("never subscribed", dict(websub_state=None)),
    ("asked, not verified yet", dict(websub_state=WebSubState.requested)),
    ("denied or never verified", dict(websub_state=WebSubState.denied)),
    ("the lease lapsed", dict(websub_lease_until=NOW - timedelta(seconds=1))),
    ("the hub went quiet", dict(websub_last_push_at=NOW - QUIET_AFTER,
                                websub_requested_at=NOW - QUIET_AFTER)),
    ("paused", dict(paused=True)),
])
def test_a_source_falls_back_to_its_own_interval_when_its_hub_does_not_push(why, websub):
    assert not is_pushing(source(**websub), now=NOW), why
    assert poll_every(source(**websub), now=NOW) == 900, why


def test_a_renewal_verified_recently_counts_as_hearing_from_the_hub():
    quiet_pushes = source(websub_last_push_at=NOW - QUIET_AFTER * 2,
                          websub_requested_at=NOW - timedelta(hours=1))
    assert is_pushing(quiet_pushes, now=NOW)


def test_a_lease_is_renewed_in_its_last_tenth_at_most_a_day_and_at_least_15_minutes():
    ten_days = source(websub_requested_at=NOW, websub_lease_until=NOW + timedelta(days=10))
    hundred_days = source(websub_requested_at=NOW,
                          websub_lease_until=NOW + timedelta(days=100))
    one_hour = source(websub_requested_at=NOW, websub_lease_until=NOW + timedelta(hours=1))
    assert renew_margin(ten_days) == timedelta(days=1)
    assert renew_margin(hundred_days) == timedelta(days=1)
    assert renew_margin(one_hour) == timedelta(minutes=15)


def test_the_beat_runs_the_websub_pass_every_five_minutes():
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app

    [entry] = [e for e in app.conf.beat_schedule.values()
               if e["task"] == "digest.websub_maintain"]
    assert entry["schedule"] == 300.0
    assert "digest.websub_maintain" in app.tasks
