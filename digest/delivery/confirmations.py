"""Transactional emails to one subscriber: the double opt-in confirmation (which also
serves as the "send me my link" email), with a per-address rate limit.

These are not digests: they go out at once, without List-* headers, and only to the
address that asked. Nothing but this email is ever sent to a ``pending`` subscriber (the
pipeline selects active subscribers only).

The limit (``DIGEST_EMAIL_RATE_LIMIT``, default 4 a minute and 11 an hour) is counted per
address, whether or not the address is known, so a 429 reveals nothing about who is
subscribed. Counts live in Redis when the broker is Redis (shared by every web process),
otherwise in the memory of this process.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select

from digest import db
from digest.delivery.transport import Transport, transport_from_settings
from digest.errors import ConfigError, RateLimitError
from digest.mail import MessageFactory
from digest.models import Subscriber, SubscriberStatus, Suppression
from digest.settings import Settings

__all__ = ["EmailRateLimiter", "build_confirmation", "limit_storage_url", "send_confirmation"]

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


def build_confirmation(sub: Subscriber, settings: Settings,
                       factory: MessageFactory | None = None) -> tuple[str, str, bytes]:
    """(envelope sender, Message-ID, message bytes) of the confirmation email, composed by
    the same path as every digest (so DKIM-signed when configured); ``sub.filters`` loaded."""
    # At call time: subscribers imports delivery (leaving cancels planned rows).
    from digest.subscribers import describe_filter

    factory = factory or MessageFactory(settings)
    headers, data = factory.confirmation(sub, [describe_filter(f) for f in sub.filters])
    return headers.mail_from, headers.message_id, data


def send_confirmation(
    subscriber_id: int, *, settings: Settings, transport: Transport | None = None
) -> str | None:
    """Send the confirmation email; the Message-ID, or None when nothing may be sent
    (no such subscriber, or the address is suppressed). Delivery errors propagate."""
    from digest.subscribers import with_filters

    s = settings
    with db._sessionmaker(s.database_url)() as session:
        sub = session.scalars(
            select(Subscriber)
            .where(Subscriber.id == subscriber_id)
            .options(
                *with_filters()
            )
        ).one_or_none()
        if sub is None or sub.status == SubscriberStatus.suppressed:
            return None
        if session.scalar(select(Suppression.id).where(Suppression.email == sub.email)):
            return None
        mail_from, message_id, data = build_confirmation(sub, s)
        address = sub.email
    with transport or transport_from_settings(s) as conn:
        conn.send(mail_from, address, data)
    return message_id
