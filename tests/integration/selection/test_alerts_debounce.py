"""Debounced alerts (plan_due_alerts): items within DIGEST_ALERT_DEBOUNCE_MINUTES of the first
one waiting go to an immediate reader as one alert, planned once the window has closed, each
item once. A clock the test controls; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from digest.delivery import send_deliveries
from digest.mail.compose import MessageFactory
from digest.models import (
    Delivery,
    DigestRun,
    Frequency,
    RunKind,
    Subscriber,
    SubscriberStatus,
)
from digest.selection import plan_due_alerts, plan_scheduled_run
from digest.selection.resend import plan_resend_failed
from tests.factories import T0, make_item, make_subscriber
from tests.ledger import claims

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
    claimed = {c.item_id for c in claims(session)}
    assert claimed == {first.id, second.id}  # the third came after the window closed
    assert MessageFactory.template_for("immediate", [first, second]) == "digest"

    # Again at the same moment (a second beat): nothing new.
    assert plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0) == []
    later = plan_due_alerts(session, settings=settings, now=T0 + 22 * MIN, since=T0)
    session.commit()
    assert [len(r.pending_ids) for r in later] == [1]
    assert {c.item_id for c in claims(session)} == {
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
    assert len(claims(session)) == 2


# --- who an alert goes to: every immediate reader the rule says (M2), and no empty run (A2) ----

def test_an_immediate_reader_of_everything_gets_the_alert_whatever_other_readers_chose(
        session, taxo, settings, smtp_sink):
    t = taxo
    make_subscriber(session, "everything@example.org", frequency="immediate")
    make_subscriber(session, "gender@example.org", {"themes": [t.gender]}, frequency="immediate")
    make_subscriber(session, "weekly@example.org", {"themes": [t.policing]})
    item = make_item(session, "Border police training", themes=[t.policing], ingested_at=T0)
    session.commit()

    runs = plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0)
    session.commit()
    assert [r.planned for r in runs] == [1]
    assert send_deliveries(runs[0].pending_ids, settings=settings).sent == 1
    [message] = smtp_sink.wait_for(1)
    assert message.rcpt_tos == ["everything@example.org"]
    assert "Border police training" in message.parsed().get_body(("plain",)).get_content()
    claimed = {(c.subscriber_id, c.item_id) for c in claims(session)}
    everything = session.scalars(select(Subscriber.id).where(
        Subscriber.email == "everything@example.org")).one()
    assert claimed == {(everything, item.id)}


def test_an_alert_window_whose_items_its_readers_already_have_leaves_no_run(
        session, taxo, settings):
    """A weekly reader's digest carried the item, then they moved to immediate (S6): the
    alert planner finds nobody to send it to and plans nothing, not an empty run."""
    t = taxo
    reader = make_subscriber(session, "mover@example.org", {"themes": [t.policing]})
    make_item(session, "Border police training", themes=[t.policing], ingested_at=T0)
    session.commit()
    digest = plan_scheduled_run(session, "weekly", now=T0 + 5 * MIN, everyone=True,
                                settings=settings)
    session.commit()
    assert digest.planned == 1
    reader.frequency = Frequency.immediate
    session.commit()

    assert plan_due_alerts(session, settings=settings, now=T0 + 30 * MIN, since=T0) == []
    session.commit()
    kinds = [run.kind for run in session.scalars(select(DigestRun))]
    assert kinds == [RunKind.weekly]


def test_a_reader_who_leaves_while_their_alert_is_planned_leaves_no_empty_run(
        session, taxo, settings):
    """The reader unsubscribes between the planner finding their item and inserting the
    alert's rows (another connection, committed): the run it had created goes again."""
    make_subscriber(session, "leaving@example.org", frequency="immediate")
    make_item(session, "Border police training", ingested_at=T0)
    session.commit()
    engine = session.get_bind()
    left = []

    def leave_after_the_window_is_found(conn, cursor, statement, *args):
        if not left and "min(items.ingested_at)" in statement:
            left.append(True)
            with Session(engine) as other:  # another connection of the pool
                other.execute(update(Subscriber).values(status=SubscriberStatus.unsubscribed))
                other.commit()

    event.listen(engine, "after_cursor_execute", leave_after_the_window_is_found)
    try:
        runs = plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0)
        session.commit()
    finally:
        event.remove(engine, "after_cursor_execute", leave_after_the_window_is_found)
    assert left and runs == []
    assert session.scalars(select(DigestRun)).all() == []
    assert session.scalars(select(Delivery)).all() == []


def test_a_resend_of_failed_alerts_does_not_skip_the_items_waiting_for_the_next_alert(
        session, taxo, settings, smtp_sink):
    """The resend's run is of kind immediate with the clock of the resend as its cutoff; the
    alert planner reads only alert windows, so the next item still gets its alert."""
    make_subscriber(session, "now@example.org", frequency="immediate")
    make_item(session, "first", ingested_at=T0)
    session.commit()
    [run] = plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0)
    session.commit()
    smtp_sink.script("now@example.org", "552 5.3.4 Message size exceeds fixed limit")
    assert send_deliveries(run.pending_ids, settings=settings).failed == 1
    second = make_item(session, "second", ingested_at=T0 + 20 * MIN)
    session.commit()
    resend = plan_resend_failed(session, run.run_id)
    session.commit()
    assert resend.created

    [later] = plan_due_alerts(session, settings=settings, now=T0 + 30 * MIN, since=T0)
    session.commit()
    of_later = set(session.scalars(select(Delivery.id).where(Delivery.run_id == later.run_id)))
    assert [c.item_id for c in claims(session) if c.delivery_id in of_later] == [second.id]
