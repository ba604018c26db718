"""The counts the database keeps (``delivery_counts``, triggers of migration 0012) stay equal
to a plain COUNT(*) GROUP BY over ``deliveries`` through planning, sending, failing,
deferring, cancelling, re-queueing, erasing and pruning, folded or not, on SQLite and
PostgreSQL; and the oldest unsent/due figures equal the plain MIN()s they replace."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, delete, func, or_, select, update

from digest.delivery import send_deliveries
from digest.delivery.counts import fold, kind_counts, runs_counts
from digest.delivery.retention import prune
from digest.delivery.send import TOO_LARGE
from digest.models import (
    Delivery,
    DeliveryCount,
    DeliveryStatus,
    DigestRun,
    RunStatus,
    Subscriber,
    utcnow,
)
from digest.records import requeue_failed
from digest.selection import plan_scheduled_run
from digest.selection.schedule import cancel_run
from digest.subscribers.manage import erase_subscriber
from digest.web.metrics import UNSENT, oldest_unsent
from tests.factories import T0, Taxo, make_item, make_subscriber


def plain_runs(session) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for run_id, status, n in session.execute(
            select(Delivery.run_id, Delivery.status, func.count())
            .group_by(Delivery.run_id, Delivery.status)):
        out.setdefault(run_id, {})[str(status)] = n
    return out


def plain_kinds(session) -> set[tuple[str, str, int, int, int]]:
    too_large = and_(Delivery.status == DeliveryStatus.failed,
                     Delivery.note.startswith(f"{TOO_LARGE}:"))
    return {(str(kind), str(status), n, sent, int(big or 0))
            for kind, status, n, sent, big in session.execute(
                select(DigestRun.kind, Delivery.status, func.count(), func.count(Delivery.sent_at),
                       func.count().filter(too_large))
                .join(DigestRun, DigestRun.id == Delivery.run_id)
                .group_by(DigestRun.kind, Delivery.status))}


def assert_counts_exact(session) -> None:
    session.flush()
    expected = plain_runs(session)
    run_ids = set(expected) | set(session.scalars(select(DigestRun.id)))
    kept = runs_counts(session, run_ids)
    assert {r: c for r, c in kept.items() if c} == expected
    assert {(k.kind, k.status, k.rows, k.sent, k.too_large)
            for k in kind_counts(session)} == plain_kinds(session)
    # Folded, the same figures (in the same transaction: nothing else wrote meanwhile).
    fold(session)
    assert {r: c for r, c in runs_counts(session, run_ids).items() if c} == expected
    rows_per_key = session.execute(
        select(func.count()).select_from(DeliveryCount)
        .group_by(DeliveryCount.run_id, DeliveryCount.status)).scalars().all()
    assert all(n == 1 for n in rows_per_key)
    session.commit()


def plain_oldest(session, now):
    return session.execute(
        select(func.min(Delivery.created_at),
               func.min(func.coalesce(Delivery.next_attempt_at, Delivery.created_at)).filter(
                   or_(Delivery.status == DeliveryStatus.pending,
                       and_(Delivery.status == DeliveryStatus.deferred,
                            Delivery.next_attempt_at <= now))))
        .join(DigestRun, DigestRun.id == Delivery.run_id)
        .where(Delivery.status.in_(UNSENT), DigestRun.status == RunStatus.sending)).one()


def _same_moment(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return abs((a - b).total_seconds()) < 1e-3


def assert_oldest_exact(session, now) -> None:
    fast = oldest_unsent(session, now)
    plain = plain_oldest(session, now)
    assert _same_moment(fast[0], plain[0]) and _same_moment(fast[1], plain[1]), (fast, plain)


def test_counts_equal_a_plain_count_through_every_transition(session, settings, smtp_sink):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    names = ("one", "two", "gone", "later", "big", "erased", "quiet")
    for name in names:
        make_subscriber(session, f"{name}@example.org", {"themes": [t.policing]})
    session.commit()
    assert_counts_exact(session)

    # Planning.
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert_counts_exact(session)
    assert_oldest_exact(session, utcnow())

    # Sending: accepted, refused for good, deferred, too large.
    smtp_sink.script("gone@example.org", "550 5.1.1 No such user")
    smtp_sink.script("later@example.org", "451 4.3.0 Try again later")
    smtp_sink.script("big@example.org", "552 5.3.4 Message size exceeds fixed limit")
    send_deliveries(run.pending_ids, settings=settings)
    kinds = plain_kinds(session)
    assert ("weekly", "failed", 2, 0, 1) in kinds  # one of them too large
    assert ("weekly", "deferred", 1, 0, 0) in kinds
    assert_counts_exact(session)
    for moment in (utcnow(), utcnow() + timedelta(days=2)):  # the deferred row not due, due
        assert_oldest_exact(session, moment)

    # A worker's claim, as raw SQL (rows in 'sending'), and its lease given back.
    quiet = session.scalar(select(Delivery.id).where(Delivery.email == "quiet@example.org"))
    session.execute(update(Delivery).where(Delivery.id == quiet)
                    .values(status=DeliveryStatus.sending))
    session.commit()
    assert_counts_exact(session)
    assert_oldest_exact(session, utcnow())

    # Re-queueing the failed rows, then an operator cancelling the run.
    failed = list(session.scalars(select(Delivery.id).where(
        Delivery.status == DeliveryStatus.failed)))
    assert failed
    requeue_failed(session, failed)
    session.commit()
    assert_counts_exact(session)
    session.execute(update(Delivery).where(Delivery.id == quiet)
                    .values(status=DeliveryStatus.pending))
    session.commit()
    cancel_run(session, run.run_id, "not this week", settings)
    session.commit()
    assert_counts_exact(session)
    assert_oldest_exact(session, utcnow())

    # A second run, sent; a reader erased (their rows go by cascade).
    later = plan_scheduled_run(session, "weekly", now=T0 + timedelta(days=7), everyone=True,
                               settings=settings)
    session.commit()
    assert_counts_exact(session)
    send_deliveries(later.pending_ids, settings=settings)
    assert_counts_exact(session)
    erased = session.scalar(select(Subscriber).where(Subscriber.email == "erased@example.org"))
    erase_subscriber(session, erased)
    session.commit()
    assert_counts_exact(session)

    # Everything finished and old: the prune deletes it in batches.
    session.execute(update(Delivery).where(Delivery.status.in_(UNSENT))
                    .values(status=DeliveryStatus.sent, sent_at=utcnow()))
    session.execute(update(DigestRun).values(status=RunStatus.done,
                                              created_at=utcnow() - timedelta(days=400)))
    session.execute(update(Delivery).values(created_at=utcnow() - timedelta(days=400)))
    session.commit()
    assert_counts_exact(session)
    report = prune(session, settings, batch_size=2)
    assert report.deliveries > 0
    assert_counts_exact(session)

    # A plain DELETE of what is left.
    session.execute(delete(Delivery))
    session.commit()
    assert_counts_exact(session)
    assert session.scalar(select(func.count()).select_from(DeliveryCount)) == 0


def test_a_fold_drops_the_runs_that_sum_to_nothing(session, settings):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    make_subscriber(session, "one@example.org", {"themes": [t.policing]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert runs_counts(session, [run.run_id]) == {run.run_id: {"pending": 1}}
    session.execute(delete(DigestRun).where(DigestRun.id == run.run_id))  # cascades
    session.commit()
    assert runs_counts(session, [run.run_id]) == {run.run_id: {}}
    fold(session)
    session.commit()
    assert session.scalar(select(func.count()).select_from(DeliveryCount)) == 0


def test_a_reports_run_is_its_deliverys_and_none_once_the_delivery_is_gone(session, settings):
    """bounces.run_id (a trigger) says what the join through deliveries says, so /metrics
    counts the reports by run kind without that join."""
    from digest.models import Bounce

    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for name in ("one", "two"):
        make_subscriber(session, f"{name}@example.org", {"themes": [t.policing]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    first, second = run.pending_ids
    session.add_all([Bounce(delivery_id=first, email="one@example.org", status_code="5.1.1",
                            kind="hard"),
                     Bounce(delivery_id=second, email="two@example.org", status_code="4.2.2",
                            kind="soft"),
                     Bounce(delivery_id=None, email="x@example.org", status_code="5.1.1",
                            kind="hard")])
    session.commit()

    def both():
        session.expire_all()
        joined = {(b.id, d) for b, d in session.execute(
            select(Bounce, Delivery.run_id).outerjoin(Delivery, Delivery.id == Bounce.delivery_id))}
        kept = {(b.id, b.run_id) for b in session.scalars(select(Bounce))}
        return joined, kept

    joined, kept = both()
    assert joined == kept and {r for _, r in kept} == {run.run_id, None}
    session.execute(delete(Delivery).where(Delivery.id == first))  # SET NULL on its report
    session.commit()
    joined, kept = both()
    assert joined == kept and sorted(r is None for _, r in kept) == [False, True, True]
    session.execute(update(Bounce).where(Bounce.delivery_id.is_(None), Bounce.kind == "soft")
                    .values(delivery_id=second))
    session.commit()
    assert both()[0] == both()[1]
