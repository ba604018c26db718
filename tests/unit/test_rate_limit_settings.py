"""DIGEST_DOMAIN_LIMITS and the rate settings: read into limits, or refused at load naming the
entry at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from digest.delivery.limits import DomainLimit, Limits, limiter_for
from digest.settings import Settings, describe_invalid


def test_domain_limits_override_the_defaults_per_domain():
    settings = Settings(domain_connections=4, domain_per_minute=300,
                        domain_limits="Gmail.com=600/min, example.org=2,gmail.com=3")
    limits = Limits.from_settings(settings)
    assert limits.for_domain("gmail.com") == DomainLimit(connections=3, per_minute=600)
    assert limits.for_domain("example.org") == DomainLimit(connections=2, per_minute=300)
    assert limits.for_domain("other.net") == DomainLimit(connections=4, per_minute=300)


def test_nothing_limited_means_no_limiter_and_no_round_trip():
    assert limiter_for(Settings()) is None


@pytest.mark.parametrize(("value", "words"), [
    ("gmail.com", "is not DOMAIN=LIMIT"),
    ("=5", "is not DOMAIN=LIMIT"),
    ("someone@gmail.com=5", "is not DOMAIN=LIMIT"),
    ("gmail.com=fast", "whole number"),
    ("gmail.com=600/hour", "whole number"),
    ("gmail.com=-1", "whole number"),
    ("gmail.com=2,gmail.com=3", "two limits of the same kind"),
])
def test_a_bad_domain_limit_is_refused_at_load_naming_the_entry(value, words):
    with pytest.raises(ValidationError) as raised:
        Settings(domain_limits=value)
    line = describe_invalid(raised.value)
    assert line.startswith("invalid settings: DIGEST_DOMAIN_LIMITS:") and words in line


@pytest.mark.parametrize("field", ["send_rate", "domain_connections", "domain_per_minute"])
def test_a_negative_rate_is_refused_at_load(field):
    with pytest.raises(ValidationError) as raised:
        Settings(**{field: -1})
    assert f"DIGEST_{field.upper()}" in describe_invalid(raised.value)
