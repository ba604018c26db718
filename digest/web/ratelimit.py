"""How many emails an address may ask for from the pages (confirmations, new links), and
where the web app's counters live.

The limit (``DIGEST_EMAIL_RATE_LIMIT``, default 4 a minute and 11 an hour) is counted per
address, whether or not the address is known, so a 429 reveals nothing about who is
subscribed. Counts live in Redis when the broker is Redis (shared by every web process),
otherwise in the memory of this process. ``limits`` comes with the web extra: nothing on the
path of the workers, the beat or the CLI imports this module.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from digest.errors import ConfigError, RateLimitError
from digest.settings import Settings

__all__ = ["EmailRateLimiter", "limit_storage_url"]

_NAMESPACE = "digest-email"


def limit_storage_url(settings: Settings) -> str:
    """Where rate-limit counters live: the Redis broker if there is one, else this process."""
    broker = settings.broker_url or ""
    return broker if broker.startswith(("redis://", "rediss://")) else "memory://"


class EmailRateLimiter:
    """Moving-window limits per address; ``check`` raises ``RateLimitError`` past them."""

    def __init__(self, settings: Settings, storage_url: str | None = None):
        try:
            self.limits = parse_many(settings.email_rate_limit)
        except ValueError as exc:
            raise ConfigError(
                f"DIGEST_EMAIL_RATE_LIMIT {settings.email_rate_limit!r} is not a rate limit: "
                "write for example '4/minute;11/hour'"
            ) from exc
        self.storage = storage_from_string(storage_url or limit_storage_url(settings))
        self._limiter = MovingWindowRateLimiter(self.storage)

    def check(self, address: str) -> None:
        """Count one email to ``address``, or raise if any limit is used up (nothing counted)."""
        # Hashed: the counter keys in Redis should not be a list of addresses.
        key = hashlib.sha256(address.strip().lower().encode()).hexdigest()
        for item in self.limits:
            if not self._limiter.test(item, _NAMESPACE, key):
                reset = self._limiter.get_window_stats(item, _NAMESPACE, key).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise RateLimitError(
                    f"too many emails asked for this address ({item}); try again in "
                    f"{_minutes(wait)}",
                    retry_after=wait,
                )
        for item in self.limits:
            self._limiter.hit(item, _NAMESPACE, key)


def _minutes(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"
