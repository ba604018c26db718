"""Scheduled planning: missed slots are caught up, late runs are held; real zones, on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from digest.delivery import send_deliveries
from digest.errors import ValidationError
from digest.models import Delivery, DigestRun, Subscriber
from digest.selection import (
    cancel_run,
    plan_due_slots,
    plan_scheduled_run,
    release_run,
)
from tests.factories import T0, make_item, make_subscriber
from tests.ledger import claims

HOUR = timedelta(hours=1)


def tick(session, when, settings, frequency="weekly"):
    plans = plan_due_slots(session, frequency, now=when, settings=settings)
    session.commit()
    return plans


def deliveries_of(session, email) -> list[tuple[str, str]]:
    """(slot key, status) of every delivery to this reader, oldest first."""
    return [tuple(r) for r in session.execute(
        select(DigestRun.slot_key, Delivery.status).join(Delivery, Delivery.run_id == DigestRun.id)
        .where(Delivery.email == email).order_by(Delivery.id))]


def items_of(session, email) -> set[str]:
    from digest.models import Item

    reader = session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    claimed = [c.item_id for c in claims(session) if c.subscriber_id == reader]
    return set(session.scalars(select(Item.title).where(Item.id.in_(claimed))))


# --- catch-up --------------------------------------------------------------------------------

def test_an_outage_of_six_hours_is_caught_up_with_each_reader_planned_once(session, taxo, settings):
    make_item(session, "news", ingested_at=T0 - timedelta(days=1))
    for hour in range(7, 15):  # Monday 07:00 ... 14:00 UTC
        make_subscriber(session, f"h{hour}@example.org", weekday=0, hour=hour)
    make_subscriber(session, "vienna@example.org", tz="Europe/Vienna", weekday=0, hour=12)  # 10 UTC
    session.commit()
    first = tick(session, T0 + timedelta(minutes=5), settings)
    assert [(p.slot, p.run.created, p.run.planned) for p in first] == [(T0, True, 1)]
    # Down from 07:10 to 13:20: slots 08 ... 12 were missed; 13 is the current one.
    later = tick(session, T0 + timedelta(hours=6, minutes=20), settings)
    assert [p.slot for p in later] == [T0 + h * HOUR for h in range(1, 7)]
    assert all(p.run.created and not p.held for p in later)
    per_slot = {p.slot.hour: p.run.planned for p in later}
    assert per_slot == {8: 1, 9: 1, 10: 2, 11: 1, 12: 1, 13: 1}
    for hour in range(7, 14):
        assert len(deliveries_of(session, f"h{hour}@example.org")) == 1, hour
    assert deliveries_of(session, "vienna@example.org") == [("weekly:2025-10-13T10", "pending")]
    assert deliveries_of(session, "h14@example.org") == []  # not due yet
    assert items_of(session, "h10@example.org") == {"news"}


def test_planning_the_same_slots_again_plans_nothing_new(session, taxo, settings):
    make_item(session, "news")
    make_subscriber(session, "due@example.org", weekday=0, hour=8)
    session.commit()
    tick(session, T0, settings)
    plans = tick(session, T0 + timedelta(hours=2), settings)
    again = tick(session, T0 + timedelta(hours=2, minutes=5), settings)
    assert [p.run.created for p in plans] == [True, True]
    assert [(p.slot, p.run.created, p.run.run_id) for p in again] == [
        (T0 + 2 * HOUR, False, plans[-1].run.run_id)]
    assert session.scalar(select(func.count()).select_from(DigestRun)) == 3
    assert deliveries_of(session, "due@example.org") == [("weekly:2025-10-13T08", "pending")]


def test_a_new_installation_plans_only_the_current_slot(session, taxo, settings):
    make_item(session, "news")
    make_subscriber(session, "earlier@example.org", weekday=0, hour=5)
    session.commit()
    plans = tick(session, T0, settings)
    assert [p.slot for p in plans] == [T0]
    assert deliveries_of(session, "earlier@example.org") == []


def test_slots_beyond_the_catch_up_range_are_not_planned_and_the_next_slot_carries_the_items(
        session, taxo, settings):
    make_item(session, "before", ingested_at=T0 - timedelta(days=1))
    # T0 + 2 h; their last digest went out a week before
    make_subscriber(session, "missed@example.org", weekday=0, hour=9,
                    watermark=T0 - timedelta(days=7))
    make_subscriber(session, "in-range@example.org", weekday=1, hour=5)  # Tuesday 05:00
    session.commit()
    tick(session, T0, settings)
    # Down until Tuesday 10:30: Monday 09:00 is more than 24 hours back.
    plans = tick(session, T0 + timedelta(hours=27, minutes=30), settings)
    assert plans[0].slot == T0 + 4 * HOUR  # the first slot that began less than 24 h ago
    assert deliveries_of(session, "missed@example.org") == []
    assert deliveries_of(session, "in-range@example.org") == [("weekly:2025-10-14T05", "pending")]
    make_item(session, "after", ingested_at=T0 + timedelta(days=3))
    session.commit()
    tick(session, T0 + timedelta(days=7) + 2 * HOUR, settings)  # their next slot
    assert deliveries_of(session, "missed@example.org") == [("weekly:2025-10-20T09", "pending")]
    assert items_of(session, "missed@example.org") == {"before", "after"}


def test_no_catch_up_plans_only_the_current_slot(session, taxo, settings):
    no_catch_up = settings.model_copy(update={"catch_up_hours": 0})
    make_item(session, "news")
    make_subscriber(session, "missed@example.org", weekday=0, hour=8)
    session.commit()
    tick(session, T0, no_catch_up)
    assert [p.slot for p in tick(session, T0 + 3 * HOUR, no_catch_up)] == [T0 + 3 * HOUR]
    assert deliveries_of(session, "missed@example.org") == []


def test_a_daily_reader_due_twice_in_one_catch_up_gets_one_digest(session, taxo, settings):
    two_days = settings.model_copy(update={"catch_up_hours": 48, "send_by_hours": 48})
    make_item(session, "news")
    make_subscriber(session, "daily@example.org", frequency="daily", hour=9)
    session.commit()
    tick(session, T0, two_days, "daily")
    tick(session, T0 + timedelta(hours=40), two_days, "daily")  # Monday 09:00 and Tuesday 09:00
    assert deliveries_of(session, "daily@example.org") == [("daily:2025-10-14T09", "pending")]


# --- daylight saving, through planning ----------------------------------------------------------

def tick_hourly(session, settings, start: datetime, hours: int) -> None:
    for h in range(hours):
        tick(session, start + h * HOUR + timedelta(minutes=7), settings)


@pytest.mark.parametrize("zone, night", [
    ("Europe/Vienna", datetime(2025, 3, 29, 22, tzinfo=UTC)),
    ("America/New_York", datetime(2025, 3, 9, 4, tzinfo=UTC)),
])
def test_spring_forward_the_skipped_hour_is_planned_with_the_hour_after(session, taxo, settings,
                                                                        zone, night):
    make_item(session, "news", ingested_at=night - timedelta(days=1))
    make_subscriber(session, "two@example.org", tz=zone, weekday=6, hour=2)
    make_subscriber(session, "three@example.org", tz=zone, weekday=6, hour=3)
    session.commit()
    tick_hourly(session, settings, night, 6)
    two = deliveries_of(session, "two@example.org")
    three = deliveries_of(session, "three@example.org")
    assert len(two) == 1 and two == three  # the same run: 03:00 local, the first slot after
    assert two[0][1] == "pending"


@pytest.mark.parametrize("zone, night, hour", [
    ("Europe/Vienna", datetime(2025, 10, 25, 22, tzinfo=UTC), 2),
    ("America/New_York", datetime(2025, 11, 2, 3, tzinfo=UTC), 1),
])
def test_fall_back_the_repeated_hour_gets_one_digest_and_no_empty_one(session, taxo, settings,
                                                                      zone, night, hour):
    make_item(session, "news", ingested_at=night - timedelta(days=1))
    make_subscriber(session, "twice@example.org", tz=zone, weekday=6, hour=hour)
    session.commit()
    tick_hourly(session, settings, night, 6)
    assert [status for _, status in deliveries_of(session, "twice@example.org")] == ["pending"]


# --- held runs ------------------------------------------------------------------------------------

@pytest.fixture
def late(settings):
    """Three days of catch-up, a day to send by: an outage of two days leaves held runs."""
    return settings.model_copy(update={"catch_up_hours": 72, "send_by_hours": 24})


@pytest.fixture
def held(session, taxo, late):
    make_item(session, "news", ingested_at=T0 - timedelta(days=1))
    make_subscriber(session, "late@example.org", weekday=0, hour=9)  # Monday 09:00: two days back
    make_subscriber(session, "timely@example.org", weekday=2, hour=6)  # Wednesday 06:00: today
    session.commit()
    tick(session, T0, late)
    plans = tick(session, T0 + timedelta(days=2, minutes=30), late)
    return {p.slot: p for p in plans}


def test_a_run_past_its_send_by_deadline_is_held_and_not_sent(session, smtp_sink, held, settings):
    late_plan, timely_plan = held[T0 + 2 * HOUR], held[T0 + timedelta(hours=47)]
    assert late_plan.held and late_plan.run.pending_ids == [] and late_plan.run.planned == 1
    assert not timely_plan.held and len(timely_plan.run.pending_ids) == 1
    assert [p.held for p in held.values() if p.run.planned] == [True, False]
    assert session.get(DigestRun, late_plan.run.run_id).status == "held"
    # Who and what are on record, and a worker given its rows sends nothing.
    row = session.scalars(select(Delivery).where(Delivery.email == "late@example.org")).one()
    assert (row.status, row.item_count) == ("pending", 1)
    assert send_deliveries([row.id], settings=settings).claimed == 0
    assert smtp_sink.messages == []


def test_releasing_a_held_run_sends_it(session, smtp_sink, held, settings):
    run_id = held[T0 + 2 * HOUR].run.run_id
    ids = release_run(session, run_id)
    session.commit()
    assert session.get(DigestRun, run_id).status == "sending"
    assert send_deliveries(ids, settings=settings).sent == 1
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["late@example.org"]]
    with pytest.raises(ValidationError, match="not held"):
        release_run(session, run_id)


def test_cancelling_a_held_run_gives_its_items_to_the_readers_next_digest(session, held, late, settings):
    run_id = held[T0 + 2 * HOUR].run.run_id
    result = cancel_run(session, run_id, "too late", settings)
    session.commit()
    assert (result.deliveries, result.items_given_back) == (1, 1)
    session.expire_all()
    assert session.get(DigestRun, run_id).status == "cancelled"
    assert deliveries_of(session, "late@example.org") == [("weekly:2025-10-13T09", "cancelled")]
    # It was their first digest: its window (the first look-back) starts over.
    reader = session.scalars(select(Subscriber).where(Subscriber.email == "late@example.org")).one()
    cutoff = session.get(DigestRun, run_id).cutoff
    assert reader.watermark == cutoff - timedelta(days=late.first_digest_lookback_days)
    assert items_of(session, "late@example.org") == set()
    with pytest.raises(ValidationError, match="cancelled"):
        release_run(session, run_id)
    tick(session, T0 + timedelta(days=7, hours=2), late)  # their next slot
    assert deliveries_of(session, "late@example.org")[-1] == ("weekly:2025-10-20T09", "pending")
    assert items_of(session, "late@example.org") == {"news"}


def test_cancelling_puts_the_watermark_back_to_the_previous_digest(session, taxo, late, settings):
    make_subscriber(session, "reader@example.org", weekday=0, hour=9)
    make_item(session, "old", ingested_at=T0 - timedelta(days=1))
    session.commit()
    plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=late)  # their last one
    make_item(session, "new", ingested_at=T0 + timedelta(days=3))
    session.commit()
    tick(session, T0 + timedelta(days=7), late)
    plans = tick(session, T0 + timedelta(days=9), late)  # Monday 09:00 is two days back: held
    run_id = next(p.run.run_id for p in plans if p.held)
    cancel_run(session, run_id, "too late", settings)
    session.commit()
    session.expire_all()
    reader = session.scalars(
        select(Subscriber).where(Subscriber.email == "reader@example.org")).one()
    assert reader.watermark == T0
    assert items_of(session, "reader@example.org") == {"old"}
