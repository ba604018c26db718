"""A run that nothing moves any more shows "stalled", not a live ETA (issue 15, defect 8):
rows that could be sent, and none claimed, sent or deferred for two leases (no worker, a
broker out of memory, a database refusing writes). The clock is injected (``now``)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from digest.delivery import send_deliveries
from digest.delivery.progress import runs_eta, runs_progress, stalled_after
from digest.models import Delivery, utcnow
from digest.selection import plan_scheduled_run
from tests.factories import T0, Taxo, make_item, make_subscriber


def _run(session, settings):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for n in range(5):
        make_subscriber(session, f"reader{n}@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    return run


def test_a_run_nothing_moved_for_two_leases_is_stalled_with_no_eta(session, settings,
                                                                    smtp_sink):
    run = _run(session, settings)
    assert send_deliveries(run.pending_ids[:2], settings=settings).sent == 2
    settings.send_rate = 1.0  # a rate to make an ETA from, had the run been moving
    moved = utcnow()
    session.execute(update(Delivery).where(Delivery.run_id == run.run_id)
                    .values(updated_at=moved))
    session.commit()
    progress = runs_progress(session, [run.run_id])

    lively = runs_eta(session, progress, settings=settings,
                      now=moved + timedelta(seconds=30))[run.run_id]
    assert not lively.stalled and lively.seconds_left == 3.0
    assert "ETA 3 s" in lively.describe()

    idle = stalled_after(settings) + 60
    stuck = runs_eta(session, progress, settings=settings,
                     now=moved + timedelta(seconds=idle))[run.run_id]
    assert stuck.stalled and stuck.seconds_left is None and stuck.rate is None
    described = stuck.describe()
    assert described.startswith("2/5 (40%), stalled: nothing moved for ")
    assert "ETA" not in described


def test_a_finished_run_is_never_stalled(session, settings, smtp_sink):
    run = _run(session, settings)
    assert send_deliveries(run.pending_ids, settings=settings).sent == 5
    session.commit()
    progress = runs_progress(session, [run.run_id])
    later = utcnow() + timedelta(days=1)
    eta = runs_eta(session, progress, settings=settings, now=later)[run.run_id]
    assert not eta.stalled and eta.describe() == "5/5 (100%), every message final"
