"""Transactional emails to one subscriber: the double opt-in confirmation (which also
serves as the "send me my link" email).

These are not digests: they go out at once, without List-* headers, and only to the
address that asked. Nothing but this email is ever sent to a ``pending`` subscriber (the
pipeline selects active subscribers only), and nothing at all, this email included, to an
address on the suppression list (rule R2). How many of these an address may ask for is the
web app's business (``digest.web.ratelimit``): this module is on the workers' path, which
needs none of the web extra's packages.
"""

from __future__ import annotations

from sqlalchemy import select

from digest import db
from digest.delivery.transport import Transport, transport_from_settings
from digest.mail import MessageFactory
from digest.models import Subscriber, SubscriberStatus, Suppression
from digest.settings import Settings
from digest.subscribers import describe_filter, with_filters

__all__ = ["build_confirmation", "send_confirmation"]


def build_confirmation(sub: Subscriber, settings: Settings,
                       factory: MessageFactory | None = None) -> tuple[str, str, bytes]:
    """(envelope sender, Message-ID, message bytes) of the confirmation email, composed by
    the same path as every digest (so DKIM-signed when configured); ``sub.filters`` loaded."""
    factory = factory or MessageFactory(settings)
    headers, data = factory.confirmation(sub, [describe_filter(f) for f in sub.filters])
    return headers.mail_from, headers.message_id, data


def send_confirmation(
    subscriber_id: int, *, settings: Settings, transport: Transport | None = None
) -> str | None:
    """Send the confirmation email; the Message-ID, or None when nothing may be sent
    (no such subscriber, or the address is suppressed). Delivery errors propagate."""
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
