"""Subscribers leaving for good: erasure, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from digest.errors import ValidationError
from digest.models import (
    Bounce,
    Delivery,
    Fault,
    Subscriber,
    SubscriberFilter,
    Suppression,
    SuppressionReason,
)
from digest.selection import delivery_contents, plan_scheduled_run
from digest.subscribers import erase_subscriber, find_subscriber, suppress
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.ledger import claims


def counts(session) -> dict[str, int]:
    contents = delivery_contents(session)
    return {
        "subscribers": session.scalar(select(func.count()).select_from(Subscriber)),
        "filters": session.scalar(select(func.count()).select_from(SubscriberFilter)),
        "deliveries": session.scalar(select(func.count()).select_from(Delivery)),
        "claims": len(claims(session)),
        "contents": session.scalar(select(func.count()).select_from(contents)),
        "bounces": session.scalar(select(func.count()).select_from(Bounce)),
    }


def test_erasing_a_subscriber_leaves_nothing_about_them_but_the_suppression(session, settings):
    t = Taxo(session)
    make_item(session, "policing", themes=[t.policing])
    make_item(session, "elections", themes=[t.elections])
    gone = make_subscriber(session, "gone@example.org", {"themes": [t.policing]})
    make_subscriber(session, "stays@example.org", {"themes": [t.elections]})
    session.commit()
    plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    delivery = session.scalars(select(Delivery).where(Delivery.subscriber_id == gone.id)).one()
    session.add(Bounce(delivery_id=delivery.id, email=gone.email, status_code="4.2.2",
                       kind=Fault.soft, report_hash="a" * 64))
    session.add(Bounce(delivery_id=None, email=gone.email, status_code="5.1.1", kind=Fault.hard,
                       report_hash="b" * 64))  # a report whose delivery row is already gone
    suppress(session, gone.email, SuppressionReason.admin, "asked to be forgotten")
    session.commit()
    # The suppression cancelled their planned digest and released its claim (rule R6); the
    # cancelled row still lists what it would have carried.
    assert counts(session) == {"subscribers": 2, "filters": 2, "deliveries": 2, "claims": 1,
                               "contents": 2, "bounces": 2}

    erased = erase_subscriber(session, find_subscriber(session, "GONE@example.org"))
    session.commit()
    assert (erased.email, erased.deliveries, erased.bounces, erased.suppression_kept) == (
        "gone@example.org", 1, 2, True)
    # Only the other reader's rows are left, and the address can never be mailed again.
    assert counts(session) == {"subscribers": 1, "filters": 1, "deliveries": 1, "claims": 1,
                               "contents": 1, "bounces": 0}
    assert session.scalars(select(Subscriber.email)).all() == ["stays@example.org"]
    assert session.scalars(select(Suppression.email)).all() == ["gone@example.org"]
    with pytest.raises(ValidationError, match="no subscriber gone@example.org"):
        find_subscriber(session, "gone@example.org")
