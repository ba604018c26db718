"""Retention (digest.delivery.retention): the delivery log (and the claims its rows hold)
pruned in batches, and never so far that an item goes to a reader twice. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from digest.delivery.retention import prune
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    RunStatus,
    Subscriber,
    utcnow,
)
from digest.selection import delivery_contents, plan_immediate_run, plan_scheduled_run
from tests.factories import make_item, make_subscriber
from tests.ledger import claims

DAY = timedelta(days=1)


def finish_everything(session) -> None:
    """What the workers would have done: every pending row sent, every run done."""
    session.execute(update(Delivery).where(Delivery.status == DeliveryStatus.pending)
                    .values(status=DeliveryStatus.sent))
    session.execute(update(DigestRun).where(DigestRun.status == RunStatus.sending)
                    .values(status=RunStatus.done))
    session.commit()


def carried_by_reader(session, run_id: int) -> dict[str, set[int]]:
    contents = delivery_contents(session)
    out: dict[str, set[int]] = {}
    for email, item_id in session.execute(
            select(Delivery.email, contents.c.item_id)
            .join(contents, contents.c.delivery_id == Delivery.id)
            .where(Delivery.run_id == run_id)):
        out.setdefault(email, set()).add(item_id)
    return out


@pytest.fixture
def present(monkeypatch):
    """Move the present the clock rule (C1) reads on: these tests follow months of a reader's
    history, and a real send may not be planned ahead of the present."""
    def move_to(moment) -> None:
        monkeypatch.setattr("digest.selection.clock.utcnow", lambda: moment)

    return move_to


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def history(session, settings):
    """A weekly reader with a current watermark, and one who had alerts while immediate and
    came back to weekly with a watermark from before them; every run sent long ago."""
    base = utcnow()
    old1 = make_item(session, "old one", ingested_at=base - 160 * DAY)
    old2 = make_item(session, "old two", ingested_at=base - 120 * DAY)
    make_subscriber(session, "weekly@example.org", watermark=base - 200 * DAY)
    switched = make_subscriber(session, "switched@example.org", frequency="immediate",
                               watermark=base - 130 * DAY)
    session.commit()
    plan_scheduled_run(session, "weekly", now=base - 150 * DAY, everyone=True, settings=settings)
    session.commit()
    plan_immediate_run(session, old2.id)  # the alert to the immediate reader
    session.commit()
    plan_scheduled_run(session, "weekly", now=base - 100 * DAY, everyone=True, settings=settings)
    session.commit()
    finish_everything(session)
    switched.frequency = "weekly"  # back to weekly: the watermark is the one from before
    session.commit()
    return base, old1, old2


def test_prune_keeps_the_claims_a_future_digest_needs_and_nothing_is_sent_twice(
        session, settings, present):
    base, old1, old2 = history(session, settings)
    sent_before: dict[str, set[int]] = {}
    for run_id in session.scalars(select(DigestRun.id)):
        for email, items in carried_by_reader(session, run_id).items():
            sent_before.setdefault(email, set()).update(items)
    assert sent_before == {"weekly@example.org": {old1.id, old2.id},
                           "switched@example.org": {old2.id}}

    later = base + 120 * DAY  # every delivery is past the 90 days
    report = prune(session, settings, now=later, batch_size=1)
    # The weekly reader's two digests go; the switched reader's alert stays: their watermark
    # (before the alert's item) would let the next digest pick that item again.
    assert (report.deliveries, report.ledger_rows, report.kept_for_ledger) == (2, 2, 1)
    assert report.batches >= 2  # one delivery per transaction
    assert [claim.subscriber_id for claim in claims(session)] == [
        session.scalar(select(Subscriber.id).where(Subscriber.email == "switched@example.org"))]

    recent = make_item(session, "recent", ingested_at=later - DAY)
    session.commit()
    present(later)
    run = plan_scheduled_run(session, "weekly", now=later, everyone=True, settings=settings)
    session.commit()
    after = carried_by_reader(session, run.run_id)
    assert after == {"weekly@example.org": {recent.id}, "switched@example.org": {recent.id}}
    for email, items in after.items():
        assert not items & sent_before[email], f"{email} got an item a second time"


def test_without_the_kept_row_the_item_would_go_again(session, settings, present):
    """The control: the claim prune kept is the only thing that stops the second copy."""
    base, _old1, old2 = history(session, settings)
    later = base + 120 * DAY
    prune(session, settings, now=later)
    session.execute(update(Delivery).values(claims=False))  # no delivery claims anything
    session.commit()
    present(later)
    run = plan_scheduled_run(session, "weekly", now=later, everyone=True, settings=settings)
    session.commit()
    assert old2.id in carried_by_reader(session, run.run_id)["switched@example.org"]


def test_prune_leaves_recent_and_unfinished_deliveries_alone(session, settings):
    base, *_ = history(session, settings)
    report = prune(session, settings, now=base + 30 * DAY)  # everything younger than 90 days
    assert (report.deliveries, report.ledger_rows, report.runs) == (0, 0, 0)
    # A run still sending: its old rows stay, however old.
    session.execute(update(DigestRun).values(status=RunStatus.sending))
    session.commit()
    report = prune(session, settings, now=base + 365 * DAY)
    assert report.deliveries == 0
    assert count(session, Delivery) == 3


def test_dry_run_counts_what_prune_then_deletes(session, settings):
    base, *_ = history(session, settings)
    later = base + 120 * DAY
    dry = prune(session, settings, now=later, dry_run=True)
    assert count(session, Delivery) == 3 and len(claims(session)) == 3
    real = prune(session, settings, now=later)
    assert (dry.deliveries, dry.ledger_rows, dry.runs, dry.kept_for_ledger) == (
        real.deliveries, real.ledger_rows, real.runs, real.kept_for_ledger)
    assert count(session, Delivery) == 3 - real.deliveries


def test_runs_left_empty_go_except_the_newest_of_each_kind(session, settings):
    base, *_ = history(session, settings)
    make_subscriber(session, "late@example.org")
    session.commit()
    session.execute(update(Subscriber).values(status="unsubscribed"))
    session.commit()
    kinds = dict(session.execute(select(DigestRun.id, DigestRun.kind)).all())
    report = prune(session, settings, now=base + 400 * DAY)
    remaining = set(session.scalars(select(DigestRun.id)))
    # Two weekly runs and one alert: the first weekly run went with its deliveries; the
    # newest weekly run stays empty; the alert run still has its kept delivery.
    assert report.runs == 1
    assert remaining == {max(i for i, k in kinds.items() if k == "weekly"),
                         next(i for i, k in kinds.items() if k == "immediate")}


def test_an_adhoc_sends_claim_is_kept_while_a_digest_could_need_it_then_pruned(
        session, settings, present):
    """Rule H3 makes an ad-hoc send claim its items: prune keeps that delivery while the
    reader's next digest could pick the item (it lies past their watermark), and deletes it
    once their digest has moved past it; the item never goes twice."""
    from digest.selection import AdhocQuery, plan_adhoc_run

    base = utcnow()
    make_subscriber(session, "ann@example.org", watermark=base - 200 * DAY)
    item = make_item(session, "old news", ingested_at=base - 120 * DAY)
    session.commit()
    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,)))
    # Sent 100 days ago: the run and its delivery (a delivery is never older than its run,
    # which the prune relies on to read only the old runs' rows).
    session.execute(update(Delivery).where(Delivery.run_id == adhoc.run_id)
                    .values(created_at=base - 100 * DAY))
    session.execute(update(DigestRun).where(DigestRun.id == adhoc.run_id)
                    .values(created_at=base - 100 * DAY))
    finish_everything(session)

    kept = prune(session, settings, now=base)
    assert (kept.deliveries, kept.ledger_rows, kept.kept_for_ledger) == (0, 0, 1)
    digest = plan_scheduled_run(session, "weekly", now=base, everyone=True, settings=settings)
    session.commit()
    assert carried_by_reader(session, digest.run_id) == {}
    finish_everything(session)

    pruned = prune(session, settings, now=base + DAY)
    assert (pruned.deliveries, pruned.ledger_rows, pruned.kept_for_ledger) == (1, 1, 0)
    present(base + 8 * DAY)
    again = plan_scheduled_run(session, "weekly", now=base + 8 * DAY, everyone=True,
                               settings=settings)
    session.commit()
    assert carried_by_reader(session, again.run_id) == {}
