"""Planning in chunks of subscribers: the same run as in one chunk, resumed after a crash."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from digest import db
from digest.models import Delivery, DigestRun, PlanningChunk, RunStatus, Subscriber
from digest.selection import plan_due_slots, plan_run_chunks, plan_scheduled_run
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


def _planned_alone_then_forgotten(session, settings):
    """The outcome of the run planned in one chunk by one planner; then the run, its rows and
    the watermarks are gone again, for the same readers to be planned another way."""
    whole = plan_scheduled_run(session, "weekly", now=T0, everyone=True,
                               settings=_settings(settings, 1000))
    session.commit()
    expected = _outcome(session, whole.run_id)
    session.execute(Delivery.__table__.delete())
    session.execute(DigestRun.__table__.delete())
    session.execute(Subscriber.__table__.update().values(watermark=None))
    session.commit()
    return expected


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
        session.execute(Subscriber.__table__.update().values(watermark=None))
        session.commit()
    assert all(o == outcomes[0] for o in outcomes[1:])
    assert outcomes[0][2][0] == RunStatus.sending


def test_a_crash_between_chunks_is_resumed_by_a_second_call_with_no_reader_twice_or_missed(
        db_url, session, taxo, settings):
    _fill(session, taxo, 5)
    small = _settings(settings, 4)
    expected = _planned_alone_then_forgotten(session, settings)

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
    chunks = session.execute(select(PlanningChunk.planned_at).where(
        PlanningChunk.run_id == run.id)).scalars().all()
    assert run.status == RunStatus.planning
    assert sum(at is not None for at in chunks) == 2 and None in chunks  # committed, and left

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


# --- several planners of one run (ADR 0032): PostgreSQL's row locks share the chunks out ---

def _chunks(url: str, run_id: int) -> list[tuple[int, bool]]:
    with db.session_scope(url) as other:
        return [(seq, at is not None) for seq, at in other.execute(
            select(PlanningChunk.seq, PlanningChunk.planned_at)
            .where(PlanningChunk.run_id == run_id).order_by(PlanningChunk.seq))]


def _wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_planner_dying_mid_chunk_leaves_that_chunk_to_the_planner_still_at_work(
        db_url, session, taxo, settings):
    """One planner holds chunk 0 (its transaction open, as mid-chunk) and dies: the others
    plan every other chunk meanwhile, then the one still at work takes chunk 0 over and
    finishes the run, with every reader planned once, as one planner alone plans it."""
    _fill(session, taxo, 7)
    small = _settings(settings, 4)
    expected = _planned_alone_then_forgotten(session, settings)[0]

    dying = db.engine_for(db_url).connect()
    holder: dict[str, int] = {}

    def share(run_id: int) -> None:
        # The other planner: it takes chunk 0 and stops there, its transaction open.
        holder["pid"] = dying.scalar(text("SELECT pg_backend_pid()"))
        dying.execute(select(PlanningChunk.seq).where(
            PlanningChunk.run_id == run_id, PlanningChunk.seq == 0).with_for_update())

    handed: list[int] = []
    result: dict[str, object] = {}

    def plan() -> None:
        with db.session_scope(db_url) as mine:
            result["run"] = plan_scheduled_run(mine, "weekly", now=T0, everyone=True,
                                               settings=small, on_chunk=handed.extend,
                                               share=share)

    planner = threading.Thread(target=plan)
    planner.start()
    try:
        run_id = lambda: session.scalar(select(DigestRun.id))  # noqa: E731
        _wait_for(lambda: run_id() is not None and "pid" in holder, "the run's chunks")
        chunks = lambda: _chunks(db_url, run_id())  # noqa: E731
        _wait_for(lambda: all(done for seq, done in chunks() if seq != 0),
                  "every chunk but the held one")
        assert chunks()[0] == (0, False) and len(chunks()) > 2
        assert planner.is_alive()  # waiting for chunk 0, not finished without it
        with db.session_scope(db_url) as killer:  # the holder dies: its backend is gone
            killer.execute(select(func.pg_terminate_backend(holder["pid"])))
        planner.join(60)
        assert not planner.is_alive()
    finally:
        dying.invalidate()
        planner.join(60)
    session.expire_all()
    deliveries, _claimed, (status, planned, skipped) = _outcome(session, run_id())
    assert deliveries == expected
    assert status == RunStatus.sending and planned + skipped == len(expected)
    pending = session.scalars(select(Delivery.id).where(Delivery.status == "pending")).all()
    assert sorted(handed) == sorted(pending) and len(set(handed)) == len(handed)
    assert _chunks(db_url, run_id()) == []  # a planned run keeps no chunks


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_planners_side_by_side_plan_each_chunk_once_and_the_last_one_finishes_the_run(
        db_url, session, taxo, settings):
    """Three more planners (``plan_run_chunks``, the workers' task) start with the run's first
    planner: together they plan every reader exactly once, hand every pending row over once,
    and the run ends ``sending`` with the counts of one planner alone."""
    _fill(session, taxo, 11, readers=60)
    expected = _planned_alone_then_forgotten(session, settings)
    small = _settings(settings, 3)
    handed: list[int] = []
    lock = threading.Lock()
    planners: list[threading.Thread] = []

    def hand(ids: list[int]) -> None:
        with lock:
            handed.extend(ids)

    def helper(run_id: int) -> None:
        with db.session_scope(db_url) as theirs:
            plan_run_chunks(theirs, run_id, settings=small, on_chunk=hand)

    def share(run_id: int) -> None:
        for _ in range(3):
            planners.append(threading.Thread(target=helper, args=(run_id,)))
            planners[-1].start()

    with db.session_scope(db_url) as mine:
        first = plan_scheduled_run(mine, "weekly", now=T0, everyone=True, settings=small,
                                   on_chunk=hand, share=share)
    for planner in planners:
        planner.join(60)
    assert len(planners) == 3 and not any(p.is_alive() for p in planners)
    session.expire_all()
    deliveries, claimed, (status, planned, skipped) = _outcome(session, first.run_id)
    assert (deliveries, claimed) == expected[:2]
    assert (status, planned, skipped) == expected[2]
    pending = session.scalars(select(Delivery.id).where(Delivery.status == "pending")).all()
    assert sorted(handed) == sorted(pending) and len(set(handed)) == len(handed)
    assert first.planned == planned  # the first planner waited for the others to finish


def test_another_planner_of_a_planned_run_plans_nothing(db_url, session, taxo, settings):
    _fill(session, taxo, 3)
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True,
                             settings=_settings(settings, 4))
    session.commit()
    assert plan_run_chunks(session, run.run_id, settings=settings) is None
    assert plan_run_chunks(session, 10_000, settings=settings) is None


def test_a_run_left_half_planned_by_the_older_planner_is_laid_out_after_its_progress(
        db_url, session, taxo, settings):
    """A run an older version left ``planning`` has ``planned_through`` and no chunks: its
    chunks are laid out after it, and the run ends as one planner alone plans it."""
    _fill(session, taxo, 9)
    small = _settings(settings, 4)
    expected = _planned_alone_then_forgotten(session, settings)

    def crash(_ids: list[int]) -> None:
        raise Crash

    with pytest.raises(Crash):  # the first chunk committed, then the planner stopped
        plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=small,
                           on_chunk=crash)
    session.rollback()
    run = session.scalars(select(DigestRun)).one()
    first = session.scalars(select(PlanningChunk).where(PlanningChunk.seq == 0)).one()
    assert first.planned_at is not None
    # As the older version left it: its progress on the run, no chunk rows.
    session.execute(PlanningChunk.__table__.delete())
    run.planned_through = first.through_id
    session.commit()

    again = plan_scheduled_run(session, "weekly", now=T0 + timedelta(minutes=1), everyone=True,
                               settings=small)
    session.commit()
    assert again.run_id == run.id and again.resumed
    assert _outcome(session, run.id) == expected
