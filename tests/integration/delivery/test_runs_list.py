"""The list of runs an operator reads (digest.delivery.progress.list_runs): runs that came to
nothing, the hourly slots nobody was due in, are folded and counted; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from digest.delivery.progress import list_runs
from digest.selection import AdhocQuery, plan_adhoc_run, plan_scheduled_run
from tests.factories import T0, make_item, make_subscriber

HOUR = timedelta(hours=1)


def history(session, settings) -> tuple[list[int], list[int]]:
    """Six hourly slots nobody was due in around a real send and a dry run; (empty, real)."""
    make_subscriber(session, "ann@example.org", hour=20)
    item = make_item(session, "Border police training")
    session.commit()
    empty, real = [], []
    for k in range(6):
        if k == 3:
            real.append(plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,))).run_id)
            real.append(plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,)),
                                       dry_run=True).run_id)
        run = plan_scheduled_run(session, "weekly", now=T0 + k * HOUR, settings=settings)
        assert (run.planned, run.skipped) == (0, 0)
        empty.append(run.run_id)
        session.commit()
    return empty, real


def test_runs_that_came_to_nothing_are_folded_and_counted(session, settings):
    empty, real = history(session, settings)
    listed = list_runs(session, limit=20)
    assert [r.id for r in listed.runs] == sorted(real, reverse=True)
    assert listed.empty_hidden == 6
    assert listed.footer("--all") == (
        "6 empty run(s) hidden (finished with nothing to send: slots nobody was due in); --all "
        "shows them")
    everything = list_runs(session, limit=20, include_empty=True)
    assert [r.id for r in everything.runs] == sorted(empty + real, reverse=True)
    assert everything.empty_hidden == 0 and everything.footer("--all") is None


def test_the_hidden_count_is_of_the_empty_runs_among_those_shown(session, settings):
    empty, real = history(session, settings)
    listed = list_runs(session, limit=1)  # the dry run, the newest run with something
    assert [r.id for r in listed.runs] == [max(real)]
    assert listed.empty_hidden == len([run_id for run_id in empty if run_id > max(real)])
    assert list_runs(session, limit=20, status="held").empty_hidden == 0
