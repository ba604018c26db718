"""Planning in chunks of subscribers: the same run as in one chunk, resumed after a crash."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from digest.models import Delivery, DigestRun, RunStatus
from digest.selection import plan_due_slots, plan_scheduled_run
from tests.factories import T0, make_item, make_subscriber
from tests.ledger import claims


class Crash(Exception):
    pass


def _fill(session, taxo, seed: int, readers: int = 23) -> None:
    rng = random.Random(seed)
    themes = [taxo.policing, taxo.elections]
    for n in range(4):
        make_item(session, f"item {n}", themes=[rng.choice(themes)],
                  ingested_at=T0 - timedelta(hours=n + 1))
    for n in range(readers):
        wanted = rng.choice([[{"themes": [rng.choice(themes)]}], []])  # [] : no filter
        make_subscriber(session, f"r{n}@example.org", *wanted)
    session.commit()


def _outcome(session, run_id: int):
    deliveries = sorted(session.execute(
        select(Delivery.subscriber_id, Delivery.status, Delivery.item_count)
        .where(Delivery.run_id == run_id)).all())
    of_run = dict(session.execute(
        select(Delivery.id, Delivery.subscriber_id).where(Delivery.run_id == run_id)).all())
    claimed = sorted((c.subscriber_id, c.item_id, of_run[c.delivery_id])
                     for c in claims(session) if c.delivery_id in of_run)
    run = session.get(DigestRun, run_id)
    session.refresh(run)
    return deliveries, claimed, (run.status, run.planned_count, run.skipped_count)


def _settings(settings, size: int):
    return settings.model_copy(update={"planning_chunk_size": size})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunked_planning_gives_the_same_deliveries_and_claims_as_one_chunk(
        db_url, session, taxo, settings, seed):
    _fill(session, taxo, seed)
    outcomes = []
    for size in (1000, 1, 4, 7):
        sent: list[int] = []
        run = plan_scheduled_run(session, "weekly", now=T0 + timedelta(minutes=size),
                                 everyone=True, settings=_settings(settings, size),
                                 on_chunk=sent.extend)
        session.commit()
        outcome = _outcome(session, run.run_id)
        pending = session.scalars(select(Delivery.id).where(
            Delivery.run_id == run.run_id, Delivery.status == "pending")).all()
        assert sorted(sent) == sorted(pending) and run.pending_ids == []
        outcomes.append(outcome)
        # The next size plans the same readers from scratch.
        session.execute(Delivery.__table__.update().values(status="cancelled", claims=False))
        from digest.models import Subscriber
        session.execute(Subscriber.__table__.update().values(watermark=None))
        session.commit()
    assert all(o == outcomes[0] for o in outcomes[1:])
    assert outcomes[0][2][0] == RunStatus.sending


def test_a_crash_between_chunks_is_resumed_by_a_second_call_with_no_reader_twice_or_missed(
        db_url, session, taxo, settings):
    _fill(session, taxo, 5)
    small = _settings(settings, 4)
    whole = plan_scheduled_run(session, "weekly", now=T0, everyone=True,
                               settings=_settings(settings, 1000))
    session.commit()
    expected = _outcome(session, whole.run_id)
    session.execute(Delivery.__table__.delete())
    session.execute(DigestRun.__table__.delete())
    from digest.models import Subscriber
    session.execute(Subscriber.__table__.update().values(watermark=None))
    session.commit()

    enqueued: list[int] = []

    def crash_after_second(ids: list[int]) -> None:
        enqueued.extend(ids)
        if len(enqueued_chunks) == 1:
            raise Crash
        enqueued_chunks.append(ids)

    enqueued_chunks: list[list[int]] = []
    with pytest.raises(Crash):
        plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=small,
                           on_chunk=crash_after_second)
    session.rollback()
    run = session.scalars(select(DigestRun)).one()
    assert run.status == RunStatus.planning and run.planned_through is not None

    again = plan_scheduled_run(session, "weekly", now=T0 + timedelta(minutes=3), everyone=True,
                               settings=small, on_chunk=enqueued.extend)
    session.commit()
    assert again.run_id == run.id and again.resumed
    assert _outcome(session, run.id) == expected
    pending = session.scalars(select(Delivery.id).where(Delivery.status == "pending")).all()
    assert sorted(enqueued) == sorted(pending)  # each chunk's rows handed over once
    assert len(set(enqueued)) == len(enqueued)
    # Finished: a third call plans nothing.
    third = plan_scheduled_run(session, "weekly", now=T0 + timedelta(minutes=4), everyone=True,
                               settings=small)
    session.commit()
    assert not third.created or third.run_id != run.id


def test_the_next_tick_finishes_a_slot_left_half_planned(db_url, session, taxo, settings):
    for n in range(9):
        make_subscriber(session, f"due{n}@example.org", weekday=T0.weekday(), hour=T0.hour)
    make_item(session, "x", ingested_at=T0 - timedelta(hours=1))
    session.commit()
    small = _settings(settings, 2)

    def crash(_ids: list[int]) -> None:
        raise Crash

    with pytest.raises(Crash):
        plan_due_slots(session, "weekly", now=T0, settings=small, on_chunk=crash)
    session.rollback()
    plans = plan_due_slots(session, "weekly", now=T0 + timedelta(hours=1), settings=small)
    session.commit()
    first = session.scalars(select(DigestRun).order_by(DigestRun.id)).first()
    assert first.status == RunStatus.sending and first.planned_count == 9
    assert any(p.run.run_id == first.id and p.run.resumed for p in plans)
    assert session.scalar(select(func.count()).select_from(Delivery)) == 9


def test_statements_grow_by_one_round_per_chunk_not_per_subscriber(
        db_url, session, taxo, settings):
    def statements_for(readers: int, size: int, day: int) -> int:
        for k in range(readers):
            make_subscriber(session, f"s{day}-{k}@example.org", {"themes": [taxo.policing]})
        make_item(session, f"p{day}", themes=[taxo.policing],
                  ingested_at=T0 + timedelta(days=day) - timedelta(hours=1))
        session.commit()
        count = 0

        def on_execute(*_args):
            nonlocal count
            count += 1

        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", on_execute)
        try:
            plan_scheduled_run(session, "weekly", now=T0 + timedelta(days=day), everyone=True,
                               settings=_settings(settings, size))
            session.commit()
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
        return count

    one = statements_for(5, 1000, 0)  # 5 readers, one chunk
    many = statements_for(40, 1000, 7)  # 45 readers, one chunk
    assert many == one
    four = statements_for(0, 12, 14)  # 45 readers, four chunks
    per_chunk = (four - one) / 3
    assert four > one and per_chunk == int(per_chunk) and per_chunk < 20
