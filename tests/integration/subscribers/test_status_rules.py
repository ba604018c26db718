"""A reader's status and what changes with it, owned by ``set_status``
(docs/delivery-promise.md, rules R2, R3, R6). On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from digest.errors import ValidationError
from digest.models import Delivery, Subscriber, Suppression, SuppressionReason
from digest.selection import plan_scheduled_run
from digest.subscribers import (
    erase_subscriber,
    find_subscriber,
    set_status,
    suppress,
    unsubscribe,
    unsuppress,
    upsert_subscriber,
)
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.ledger import carried, claims


def listed(session) -> list[tuple[str, str, str]]:
    return [tuple(row) for row in session.execute(
        select(Suppression.email, Suppression.reason, Suppression.detail)
        .order_by(Suppression.email))]


def test_an_upsert_with_status_suppressed_lists_the_address_so_erasure_keeps_it_unmailable(
        session):
    upsert_subscriber(session, "new@example.org", smtputf8=False, status="suppressed")
    upsert_subscriber(session, "old@example.org", smtputf8=False)
    upsert_subscriber(session, "old@example.org", smtputf8=False, status="suppressed")
    session.commit()
    assert listed(session) == [("new@example.org", "admin", ""),
                               ("old@example.org", "admin", "")]
    erased = erase_subscriber(session, find_subscriber(session, "new@example.org"))
    session.commit()
    assert erased.suppression_kept
    # Added again later: refused, not mailed (rule R2, R7).
    with pytest.raises(ValidationError, match="new@example.org is on the suppression list"):
        upsert_subscriber(session, "new@example.org", smtputf8=False, status="pending")
    session.rollback()
    assert session.scalars(select(Subscriber.email)).all() == ["old@example.org"]


@pytest.mark.parametrize("status", ["active", "pending"])
def test_a_suppressed_address_is_never_made_active_or_pending_without_lifting_it(session,
                                                                                status):
    sub = make_subscriber(session, "ann@example.org")
    suppress(session, sub.email, SuppressionReason.hard_bounce, "550 5.1.1")
    session.commit()
    with pytest.raises(ValidationError, match="unsuppress ann@example.org"):
        set_status(session, sub, status)
    session.rollback()
    # An operator's explicit choice for this one reader lifts it (rule R5).
    upsert_subscriber(session, "ann@example.org", smtputf8=False, status=status,
                      lift_suppression=True)
    session.commit()
    assert (find_subscriber(session, "ann@example.org").status, listed(session)) == (status, [])


def test_unsubscribing_a_suppressed_reader_keeps_status_and_list_in_agreement(session):
    sub = make_subscriber(session, "ann@example.org")
    suppress(session, sub.email, SuppressionReason.hard_bounce, "550 5.1.1")
    unsubscribe(session, sub)
    session.commit()
    assert sub.status == "suppressed" and [e for e, _, _ in listed(session)] == [sub.email]


def _away_for_months(session, settings):
    """A weekly reader whose last digest was 60 days ago, who left then; an item ingested
    while they were away, one in the last week, and one they already received."""
    t = Taxo(session)
    ann = make_subscriber(session, "ann@example.org", {"themes": [t.policing]},
                          watermark=T0 - timedelta(days=70))
    received = make_item(session, "received", themes=[t.policing],
                         ingested_at=T0 - timedelta(days=61))
    plan_scheduled_run(session, "weekly", now=T0 - timedelta(days=60), everyone=True,
                       settings=settings)
    for delivery in session.scalars(select(Delivery)):
        delivery.status = "sent"  # the digest went out before they left
    # Their digest claimed it; it is back in this week's window only by its edit date. Nothing
    # but this test moves an ingested_at, so the row's newest_item_at moves with it.
    received.ingested_at = T0 - timedelta(days=2)
    session.execute(update(Delivery).values(newest_item_at=received.ingested_at))
    make_item(session, "while away", themes=[t.policing], ingested_at=T0 - timedelta(days=30))
    make_item(session, "this week", themes=[t.policing], ingested_at=T0 - timedelta(days=3))
    unsubscribe(session, ann)
    session.commit()
    return ann


def _resubscribe_on_preferences_page(session, sub):
    set_status(session, sub, "active")


def _subscribe_again_and_confirm(session, sub):
    upsert_subscriber(session, sub.email, smtputf8=False, status="pending")
    set_status(session, sub, "active")


def _suppressed_then_lifted(session, sub):
    set_status(session, sub, "active")  # back, then suppressed, then lifted by an operator
    suppress(session, sub.email, SuppressionReason.hard_bounce, "550 5.1.1")
    unsuppress(session, sub.email)


@pytest.mark.parametrize("come_back", [_resubscribe_on_preferences_page,
                                       _subscribe_again_and_confirm, _suppressed_then_lifted])
def test_a_returning_reader_starts_afresh_with_the_first_digests_look_back(session, settings,
                                                                           come_back):
    ann = _away_for_months(session, settings)
    come_back(session, ann)
    session.commit()
    assert ann.status == "active" and ann.watermark is None
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    delivery = session.scalars(select(Delivery).where(Delivery.run_id == run.run_id)).one()
    from digest.models import Item

    titles = sorted(session.scalars(select(Item.title).where(
        Item.id.in_(carried(session, delivery.id)))))
    # Rule R6: the look-back of a new reader (7 days), not the 60 days away; rule N1: not
    # what they received before they left.
    assert titles == ["this week"]


@pytest.mark.parametrize("before", ["active", "pending", "unsubscribed"])
def test_lifting_a_suppression_gives_back_the_status_the_reader_had(session, before):
    sub = make_subscriber(session, "ann@example.org")
    set_status(session, sub, before)
    suppress(session, sub.email, SuppressionReason.admin)
    session.commit()
    assert unsuppress(session, sub.email)
    session.commit()
    # Rule R5: an operator's unsuppress never confirms a pending reader nor re-subscribes one
    # who had asked to leave.
    assert (sub.status, listed(session)) == (before, [])


def test_a_suppressed_reader_who_asks_to_leave_stays_unsubscribed_once_lifted(session):
    sub = make_subscriber(session, "ann@example.org")
    suppress(session, sub.email, SuppressionReason.admin)
    unsubscribe(session, sub)
    unsuppress(session, sub.email)
    session.commit()
    assert sub.status == "unsubscribed"


def test_a_reader_who_leaves_while_their_digest_waits_gets_its_items_when_they_return(
        session, settings):
    t = Taxo(session)
    ann = make_subscriber(session, "ann@example.org", {"themes": [t.policing]})
    make_item(session, "waiting", themes=[t.policing], ingested_at=T0 - timedelta(days=1))
    plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    unsubscribe(session, ann)  # the planned digest is cancelled before it went
    session.commit()
    assert claims(session) == []  # its claims released (N1, R6)
    set_status(session, ann, "active")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0 + timedelta(hours=1), everyone=True,
                             settings=settings)
    session.commit()
    delivery = session.scalars(select(Delivery).where(Delivery.run_id == run.run_id)).one()
    assert delivery.item_count == 1
