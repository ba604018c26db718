"""Rate limits shared through Redis: the overall send rate holds across processes, a domain's
concurrent senders hold, and what is over a limit is deferred (attempt given back) and sent
later, never slept on by the worker.

Real parts: Redis (a key prefix of its own per test), SQLite and PostgreSQL, a local SMTP server.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
from sqlalchemy import select

from digest.delivery import send_deliveries
from digest.delivery.limits import DomainLimit, InProcessLimiter, Limits, RedisLimiter
from digest.models import Delivery, utcnow
from digest.selection import plan_scheduled_run
from tests.conftest import REDIS_URL
from tests.factories import T0, Taxo, make_item, make_subscriber


@pytest.fixture
def prefix():
    return f"digest-test:{uuid.uuid4().hex}:"


def _take_for(url: str, prefix: str, rate: float, seconds: float, ready, go, out) -> None:
    limiter = RedisLimiter(url, Limits(send_rate=rate), prefix=prefix)
    ready.put(True)
    go.wait(60)
    start, taken = time.monotonic(), 0
    while time.monotonic() < start + seconds:
        taken += limiter.take({"example.org": 5}, uuid.uuid4().hex, 60).allowed["example.org"]
    out.put(taken)


def test_two_processes_sharing_a_rate_send_no_more_than_the_rate_together(prefix):
    rate, seconds = 40.0, 2.5
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_take_for,
                           args=(REDIS_URL, prefix, rate, seconds, ready, go, out))
               for _ in range(2)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=60)  # both are up before the clock starts
    go.set()
    taken = [out.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(10)
    # The bucket holds one second's burst on top of the rate; 10% for the clocks.
    ceiling = rate * seconds + rate
    assert sum(taken) <= ceiling * 1.1, taken
    assert sum(taken) >= rate * seconds * 0.8, taken  # and the rate is used, not starved
    assert all(t > 0 for t in taken), taken  # both got a share


def test_in_process_limiter_holds_the_same_rate():
    limiter = InProcessLimiter(Limits(send_rate=20.0))
    start, taken = time.monotonic(), 0
    while time.monotonic() - start < 1.0:
        taken += limiter.take({"example.org": 3}, "h", 60).allowed["example.org"]
    assert 20 <= taken <= 20 * 2 * 1.1


def _hold_slots(url: str, prefix: str, rounds: int, ready, go, out) -> None:
    import redis

    limiter = RedisLimiter(url, Limits(default=DomainLimit(connections=1)), prefix=prefix)
    r = redis.Redis.from_url(url)
    held, peak = 0, 0
    ready.put(True)
    go.wait(60)
    for _ in range(rounds):
        holder = uuid.uuid4().hex
        if limiter.take({"example.org": 1}, holder, 60).allowed["example.org"]:
            held += 1
            peak = max(peak, int(r.incr(f"{prefix}inside")))
            time.sleep(0.01)
            r.decr(f"{prefix}inside")
            limiter.release(["example.org"], holder)
            # A sender does other work between connections; without this pause the holder
            # takes the slot back within microseconds and the other process never gets it.
            time.sleep(0.005)
        else:
            time.sleep(0.002)
    out.put((held, peak))


def test_a_domain_connection_limit_holds_with_two_workers(prefix):
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_hold_slots, args=(REDIS_URL, prefix, 150, ready, go, out))
               for _ in range(2)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=60)  # both contend from the same moment
    go.set()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
    assert max(peak for _, peak in results) == 1  # never two senders to the domain at once
    assert all(held > 0 for held, _ in results), results


@pytest.fixture
def five_planned(session, smtp_sink, settings):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for n in range(5):
        make_subscriber(session, f"reader{n}@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    return run.pending_ids


def _rows(session) -> list[Delivery]:
    session.expire_all()
    return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def test_deliveries_over_the_send_rate_are_deferred_with_their_attempt_and_sent_later(
        session, settings, smtp_sink, five_planned, prefix):
    limiter = RedisLimiter(REDIS_URL, Limits(send_rate=2.0), prefix=prefix)
    before = time.monotonic()
    result = send_deliveries(five_planned, settings=settings, limiter=limiter)
    assert time.monotonic() - before < 2  # the worker did not wait for the rate
    assert (result.sent, result.deferred) == (2, 3)  # one second's burst goes at once
    deferred = [d for d in _rows(session) if d.status == "deferred"]
    assert len(deferred) == 3
    assert {d.attempts for d in deferred} == {0}  # the attempt is given back
    assert all(d.next_attempt_at > utcnow() for d in deferred)
    assert all("send rate is reached" in d.note for d in deferred)
    # Spaced at the rate (half a second apart), not all due at once.
    due = sorted(d.next_attempt_at for d in deferred)
    assert (due[-1] - due[0]).total_seconds() >= 0.9
    assert sum(len(ids) for _, ids in result.later) == 3
    # The groups the caller re-enqueues, each at its time: every row goes.
    later = list(result.later)
    while later:
        when, ids = later.pop(0)
        time.sleep(max(0.0, (when - utcnow()).total_seconds()))
        later = sorted(later + send_deliveries(ids, settings=settings, limiter=limiter).later)
    rows = _rows(session)
    assert {d.status for d in rows} == {"sent"}
    assert {d.attempts for d in rows} == {1}
    assert len(smtp_sink.wait_for(5)) == 5


def test_a_domain_with_all_its_senders_busy_is_deferred_and_sent_once_they_free(
        session, settings, smtp_sink, five_planned, prefix):
    limiter = RedisLimiter(REDIS_URL, Limits(default=DomainLimit(connections=1)), prefix=prefix)
    other_worker = uuid.uuid4().hex
    assert limiter.take({"example.org": 1}, other_worker, 60).allowed == {"example.org": 1}
    result = send_deliveries(five_planned, settings=settings, limiter=limiter)
    assert (result.sent, result.deferred) == (0, 5)
    rows = _rows(session)
    assert {d.attempts for d in rows} == {0}
    assert all("workers sending to it already" in d.note for d in rows)
    assert smtp_sink.messages == []
    limiter.release(["example.org"], other_worker)
    time.sleep(max(0.0, (result.later[-1][0] - utcnow()).total_seconds()))
    result = send_deliveries(five_planned, settings=settings, limiter=limiter)
    assert result.sent == 5
    # This batch's slot was given back at its end.
    assert limiter.take({"example.org": 1}, uuid.uuid4().hex, 60).allowed == {"example.org": 1}


def test_a_domain_per_minute_override_defers_only_that_domain(
        session, settings, smtp_sink, prefix):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for n in range(3):
        make_subscriber(session, f"a{n}@slow.example")
        make_subscriber(session, f"b{n}@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    limits = Limits(overrides={"slow.example": DomainLimit(per_minute=60)})
    result = send_deliveries(run.pending_ids, settings=settings,
                             limiter=RedisLimiter(REDIS_URL, limits, prefix=prefix))
    rows = _rows(session)
    assert {d.email for d in rows if d.status == "deferred"} == {"a1@slow.example",
                                                                   "a2@slow.example"}
    assert result.sent == 4


def test_an_unreachable_redis_puts_the_batch_back_with_a_clear_error(
        session, settings, smtp_sink, five_planned, prefix):
    from digest.errors import SendSetupError

    limiter = RedisLimiter("redis://127.0.0.1:1/0", Limits(send_rate=5.0), prefix=prefix)
    with pytest.raises(SendSetupError, match="kept in Redis"):
        send_deliveries(five_planned, settings=settings, limiter=limiter)
    rows = _rows(session)
    assert {d.status for d in rows} == {"deferred"} and {d.attempts for d in rows} == {0}
