"""Debounced alerts (plan_due_alerts): items within DIGEST_ALERT_DEBOUNCE_MINUTES of the first
one waiting go to an immediate reader as one alert, planned once the window has closed, each
item once. A clock the test controls; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from digest.mail.compose import MessageFactory
from digest.models import DigestRun, SentItem
from digest.selection import plan_due_alerts
from tests.factories import T0, make_item, make_subscriber

MIN = timedelta(minutes=1)


def test_items_within_the_window_go_as_one_alert_once_it_has_closed(session, taxo, settings):
    t = taxo
    make_subscriber(session, "now@example.org", {"themes": [t.policing]}, frequency="immediate")
    first = make_item(session, "first", themes=[t.policing], ingested_at=T0)
    second = make_item(session, "second", themes=[t.policing], ingested_at=T0 + 3 * MIN)
    third = make_item(session, "third", themes=[t.policing], ingested_at=T0 + 12 * MIN)
    session.commit()

    assert plan_due_alerts(session, settings=settings, now=T0 + 5 * MIN, since=T0) == []
    runs = plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0)
    session.commit()
    assert [len(r.pending_ids) for r in runs] == [1]
    ledger = {row.item_id for row in session.scalars(select(SentItem))}
    assert ledger == {first.id, second.id}  # the third came after the window closed
    assert MessageFactory.template_for("immediate", [first, second]) == "digest"

    # Again at the same moment (a second beat): nothing new.
    assert plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0) == []
    later = plan_due_alerts(session, settings=settings, now=T0 + 22 * MIN, since=T0)
    session.commit()
    assert [len(r.pending_ids) for r in later] == [1]
    assert {row.item_id for row in session.scalars(select(SentItem))} == {
        first.id, second.id, third.id}
    assert len(session.scalars(select(DigestRun)).all()) == 2


def test_an_item_nobody_wants_at_once_creates_no_run(session, taxo, settings):
    t = taxo
    make_subscriber(session, "now@example.org", {"themes": [t.gender]}, frequency="immediate")
    make_subscriber(session, "weekly@example.org")
    make_item(session, "policing", themes=[t.policing], ingested_at=T0)
    session.commit()
    assert plan_due_alerts(session, settings=settings, now=T0 + 60 * MIN, since=T0) == []
    assert session.scalars(select(DigestRun)).all() == []


def test_without_a_scheduler_an_open_window_closes_now(session, taxo, settings):
    make_subscriber(session, "now@example.org", frequency="immediate")
    make_item(session, "a", ingested_at=T0)
    make_item(session, "b", ingested_at=T0 + MIN)
    session.commit()
    runs = plan_due_alerts(session, settings=settings, now=T0 + 2 * MIN, wait=False, since=T0)
    session.commit()
    assert [r.planned for r in runs] == [1]
    assert len(session.scalars(select(SentItem)).all()) == 2
