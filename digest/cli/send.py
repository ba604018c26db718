"""``digest send``: plan and send the weekly, daily and ad-hoc digests."""

from __future__ import annotations

import typer
from sqlalchemy.exc import SQLAlchemyError

from digest.cli._common import (
    console,
    ensure_db,
    new_session,
    parse_when,
    session_scope,
    task_queue,
)
from digest.errors import PlanningStoppedError
from digest.settings import get_settings

app = typer.Typer(help="Plan and send digests.", no_args_is_help=True)


def _report_run(planned, dry_run: bool) -> None:
    if not planned.created:
        console.print(f"run #{planned.run_id} already exists for this slot: nothing new planned.")
        return
    verb = "would send" if dry_run else "sending"
    if planned.resumed:
        console.print(f"run #{planned.run_id} was left half-planned: planned the rest.")
    console.print(f"run #{planned.run_id}: {verb} {planned.planned} digest(s); "
                  f"{planned.skipped} empty digest(s) skipped.")
    if dry_run:
        _forecast(planned.run_id)
        if planned.pending_ids:
            console.print(f"see them with 'digest deliveries --run {planned.run_id}' and "
                          f"'digest preview --delivery {planned.pending_ids[0]}'; nothing was sent",
                          markup=False, highlight=False)
        return
    task_queue().deliver(planned.pending_ids)


def _forecast(run_id: int) -> None:
    """A dry run's forecast: messages, their size, how long the real send would take."""
    from digest.cli._common import session_scope
    from digest.cli.runs import print_forecast
    from digest.delivery.forecast import forecast_run

    with session_scope() as session:
        print_forecast(forecast_run(session, run_id, get_settings()))


def _plan(fn):
    # A dry run is kept too: its rows (status dry_run) are what an operator previews.
    session = new_session()
    try:
        planned = fn(session)
        session.commit()
        return planned
    except SQLAlchemyError as exc:
        session.rollback()
        stopped = _planning_stopped(exc)
        if stopped is None:
            raise
        raise stopped from exc
    finally:
        session.close()


def _planning_stopped(exc: SQLAlchemyError) -> PlanningStoppedError | None:
    """Planning failed half-way: the runs it left ``planning``, in one line, and what happens
    next; None when the database cannot even say (the outage's own line is printed then)."""
    from sqlalchemy import select

    from digest.cli.outages import first_line
    from digest.models import DigestRun, RunStatus

    try:
        with session_scope() as session:
            left = session.execute(
                select(DigestRun.id, DigestRun.planned_count).where(
                    DigestRun.status == RunStatus.planning, DigestRun.dry_run.is_(False))
                .order_by(DigestRun.id)).all()
    except SQLAlchemyError:
        return None
    if not left:
        return PlanningStoppedError(
            f"planning failed before any run was recorded ({first_line(exc)}); nothing was "
            "planned or sent: run the command again once the database is back")
    runs = ", ".join(f"run #{run_id} ({count} digest(s) planned so far)"
                     for run_id, count in left)
    return PlanningStoppedError(
        f"planning stopped ({first_line(exc)}): {runs} "
        f"{'stays' if len(left) == 1 else 'stay'} 'planning'; the beat's sweep plans the "
        "rest by itself within two sweeps (DIGEST_SWEEP_SECONDS; or 'digest tick' now) and "
        "sends nobody twice; what "
        "was planned already is being sent")


def _send_scheduled(frequency: str, now: bool, dry_run: bool, as_of: str | None) -> None:
    from digest.delivery.periodic import share_planning
    from digest.selection import plan_due_slots, plan_scheduled_run

    ensure_db()
    settings = get_settings()
    clock = parse_when(as_of)
    # Each chunk's deliveries are enqueued as soon as its transaction commits, so workers
    # send while the rest is planned (a dry run enqueues nothing).
    enqueue = None if dry_run else task_queue().deliver
    # Other planners (workers' plan_run tasks) take chunks beside this command's.
    share = None if dry_run else share_planning(task_queue(), settings)
    if now:
        planned = _plan(lambda s: plan_scheduled_run(s, frequency, now=clock, everyone=True,
                                                     dry_run=dry_run, settings=settings,
                                                     on_chunk=enqueue, share=share))
        _report_run(planned, dry_run)
        return
    # This hour's slot and any missed since the last one planned (or left half-planned).
    plans = _plan(lambda s: plan_due_slots(s, frequency, now=clock, dry_run=dry_run,
                                           settings=settings, on_chunk=enqueue, share=share))
    for plan in plans:
        _report_slot(plan, dry_run)


def _report_slot(plan, dry_run: bool) -> None:
    run = plan.run
    say = f"slot {plan.slot:%Y-%m-%d %H:00} UTC: run #{run.run_id}"
    if not run.created:
        console.print(f"{say} already exists: nothing new planned.", markup=False, highlight=False)
    elif plan.held:
        verb = "would be held" if dry_run else "held"
        console.print(f"{say} {verb}: {run.planned} digest(s) past the send-by deadline "
                      f"(DIGEST_SEND_BY_HOURS); send them with 'digest runs release {run.run_id}' "
                      f"or drop them with 'digest runs cancel {run.run_id}'.",
                      markup=False, highlight=False)
    else:
        verb = "would send" if dry_run else "sending"
        console.print(f"{say}: {verb} {run.planned} digest(s); {run.skipped} empty digest(s) "
                      "skipped.", markup=False, highlight=False)
        if not dry_run:
            task_queue().deliver(run.pending_ids)
    if dry_run and run.created and run.run_id is not None:
        _forecast(run.run_id)


@app.command("weekly")
def send_weekly(
    now: bool = typer.Option(False, "--now", help="Everyone weekly, not only those due this hour."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Count what would be sent; change nothing."),
    as_of: str | None = typer.Option(None, help="Pretend the clock is this (ISO date/time)."),
) -> None:
    """Plan and send the weekly digests of this hour's slot and of any slot missed since the
    last one planned (DIGEST_CATCH_UP_HOURS back); late ones are held."""
    _send_scheduled("weekly", now, dry_run, as_of)


@app.command("daily")
def send_daily(
    now: bool = typer.Option(False, "--now"),
    dry_run: bool = typer.Option(False, "--dry-run"),
    as_of: str | None = typer.Option(None),
) -> None:
    """Plan and send the daily digests of this hour's slot and of any missed (as weekly)."""
    _send_scheduled("daily", now, dry_run, as_of)


@app.command("adhoc")
def send_adhoc(
    theme: list[str] = typer.Option([], "--theme"),  # noqa: B008
    location: list[str] = typer.Option([], "--location"),  # noqa: B008
    content_type: list[str] = typer.Option([], "--type"),  # noqa: B008
    date_from: str | None = typer.Option(None, "--from",
                                         help="Published on or after (YYYY-MM-DD)."),
    date_to: str | None = typer.Option(None, "--to", help="Published on or before (YYYY-MM-DD)."),
    item: list[int] = typer.Option([], "--item", help="Item id (repeatable)."),  # noqa: B008
    frequency: list[str] = typer.Option([], "--frequency",  # noqa: B008
                                        help="Only subscribers of this frequency."),
    key: str | None = typer.Option(None, help="A new key to send the same selection again."),
    also_in_digests: bool = typer.Option(
        False, "--also-in-digests",
        help="Let the readers' digests and alerts carry these items too (by default they do "
             "not carry an item this send carried)."),
    dry_run: bool = typer.Option(False, "--dry-run"),
) -> None:
    """Send chosen items now to every subscriber whose preferences they match. Their digests
    and alerts then leave out what this send carried, unless --also-in-digests."""
    from digest.selection import AdhocQuery, plan_adhoc_run
    from digest.subscribers import check_choice

    ensure_db()
    for f in frequency:
        check_choice("frequency", f, ["immediate", "daily", "weekly"])
    query = AdhocQuery(tuple(theme), tuple(location), tuple(content_type), parse_when(date_from),
                       parse_when(date_to, end_of_day=True), tuple(item), tuple(frequency),
                       also_in_digests=also_in_digests)
    planned = _plan(lambda s: plan_adhoc_run(s, query, dry_run=dry_run,
                                             slot_key=f"adhoc:{key}" if key else None))
    _report_run(planned, dry_run)
    if planned.created and planned.planned:
        console.print("its readers' digests and alerts " + (
            "may carry these items again (--also-in-digests)." if also_in_digests else
            "will leave out what it carries to them (--also-in-digests would not)."),
            markup=False, highlight=False)

