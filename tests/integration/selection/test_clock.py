"""Rule C1: a real send is never planned as of a moment ahead of the present (its cutoff would
become the readers' watermark and skip what is ingested until then); dry runs and previews
may look ahead. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from digest.errors import ValidationError
from digest.models import DigestRun, Subscriber, utcnow
from digest.selection import plan_due_alerts, plan_due_slots, plan_scheduled_run, preview_items
from digest.selection.clock import CLOCK_TOLERANCE
from tests.factories import make_item, make_subscriber


def test_a_real_send_as_of_tomorrow_is_refused_and_moves_no_watermark(session, taxo, settings):
    reader = make_subscriber(session, "ann@example.org")
    make_subscriber(session, "now@example.org", frequency="immediate")
    item = make_item(session, "Border police training", ingested_at=utcnow() - timedelta(hours=1))
    session.commit()
    tomorrow = utcnow() + timedelta(days=1)

    for plan in (
            lambda: plan_scheduled_run(session, "weekly", now=tomorrow, everyone=True,
                                       settings=settings),
            lambda: plan_due_slots(session, "weekly", now=tomorrow, settings=settings),
            lambda: plan_due_alerts(session, settings=settings, now=tomorrow)):
        with pytest.raises(ValidationError, match="ahead of the present.*--dry-run"):
            plan()
        session.rollback()
    assert session.scalar(select(func.count()).select_from(DigestRun)) == 0
    assert session.scalar(select(Subscriber.watermark).where(Subscriber.id == reader.id)) is None

    # A dry run and a preview may look ahead; the real send as of now still carries the item.
    dry = plan_scheduled_run(session, "weekly", now=tomorrow, everyone=True, dry_run=True,
                             settings=settings)
    session.commit()
    assert dry.planned == 1
    assert [i.id for i in preview_items(session, reader, as_of=tomorrow, settings=settings)] == [
        item.id]
    real = plan_scheduled_run(session, "weekly", everyone=True, settings=settings)
    session.commit()
    assert real.planned == 1


def test_a_clock_within_a_minute_of_the_present_is_the_present(session, taxo, settings,
                                                               monkeypatch):
    present = utcnow().replace(microsecond=0)
    monkeypatch.setattr("digest.selection.clock.utcnow", lambda: present)
    make_subscriber(session, "ann@example.org")
    make_item(session, "Border police training", ingested_at=present - timedelta(hours=1))
    session.commit()
    with pytest.raises(ValidationError, match="ahead of the present"):
        plan_scheduled_run(session, "weekly", now=present + CLOCK_TOLERANCE + timedelta(seconds=1),
                           everyone=True, settings=settings)
    session.rollback()
    within = plan_scheduled_run(session, "weekly", now=present + CLOCK_TOLERANCE, everyone=True,
                                settings=settings)
    session.commit()
    assert within.planned == 1
