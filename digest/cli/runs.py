"""``digest runs``: list the runs (with the ETA of a running one); forecast one; release or
cancel a held one; resend a finished one's failed deliveries."""

from __future__ import annotations

import typer
from rich.table import Table

from digest.cli._common import console, ensure_db, session_scope, task_queue
from digest.errors import ValidationError

app = typer.Typer(help="Digest runs: list them, forecast one, release or cancel a held one, "
                       "resend the failed deliveries of a finished one.",
                  invoke_without_command=True)


@app.callback()
def runs_list(
    ctx: typer.Context,
    status: str | None = typer.Option(
        None, "--status", help="planning, planned, sending, done, held, cancelled"),
    limit: int = typer.Option(20, min=1, help="Show at most this many runs."),
    show_all: bool = typer.Option(
        False, "--all", help="Also the empty runs (hourly slots nobody was due in)."),
) -> None:
    """The recent runs, newest first: kind, slot, status, what each delivery came to, and
    for a run still sending how far it got and when it should be done (and at whose rate), or
    what holds it up. Runs that came to nothing are folded into a footer line."""
    if ctx.invoked_subcommand is not None:
        return
    from digest.delivery import runs_progress
    from digest.delivery.progress import list_runs, runs_eta
    from digest.models import DeliveryStatus as D
    from digest.models import RunStatus
    from digest.settings import get_settings
    from digest.subscribers import check_choice

    ensure_db()
    if status:
        check_choice("status", status, [s.value for s in RunStatus])
    with session_scope() as session:
        listed = list_runs(session, limit=limit, status=status, include_empty=show_all)
        runs = listed.runs
        progress = runs_progress(session, [r.id for r in runs])
        running = [r.id for r in runs if r.status in (RunStatus.sending, RunStatus.planning)]
        etas = runs_eta(session, {run_id: progress[run_id] for run_id in running},
                        settings=get_settings())
        table = Table("id", "kind", "slot", "status", "planned", "sent", "deferred", "failed",
                      "skipped", "cancelled", "created (UTC)", "finished (UTC)", "progress")
        for r in runs:
            c = progress[r.id]
            waiting = c.get(D.deferred, 0)
            table.add_row(
                str(r.id), r.kind + (" (dry run)" if r.dry_run else ""), r.slot_key, r.status,
                str(r.planned_count), str(c.get(D.sent, 0)), str(waiting),
                str(c.get(D.failed, 0)), str(r.skipped_count), str(c.get(D.cancelled, 0)),
                f"{r.created_at:%Y-%m-%d %H:%M}",
                f"{r.finished_at:%Y-%m-%d %H:%M}" if r.finished_at else "",
                etas[r.id].describe() if r.id in etas else "")
        console.print(table)
        footer = listed.footer("--all")
        if footer:
            console.print(footer, markup=False, highlight=False)
        held = [r.id for r in runs if r.status == RunStatus.held]
        with_failed = [r.id for r in runs if r.status in (RunStatus.done, RunStatus.cancelled)
                       and not r.dry_run and progress[r.id].get(D.failed, 0)]
    for run_id in held:
        console.print(f"run #{run_id} is held: 'digest runs release {run_id}' sends it, "
                      f"'digest runs cancel {run_id}' drops it.", markup=False, highlight=False)
    for run_id in with_failed:
        console.print(f"run #{run_id} has failed deliveries: 'digest deliveries --run {run_id} "
                      f"--status failed' lists them, 'digest runs resend-failed {run_id}' sends "
                      "them once more.", markup=False, highlight=False)


@app.command("forecast")
def runs_forecast(run_id: int = typer.Argument(..., help="The run's id (a dry run, typically).")
                  ) -> None:
    """How many messages a run sends, their average size, and how long that takes at the rate
    limit (DIGEST_SEND_RATE) and at the throughput measured lately, saying which rate the
    estimate used; for a finished run, what it came to and how long it took."""
    from digest.delivery.forecast import forecast_run
    from digest.settings import get_settings

    ensure_db()
    with session_scope() as session:
        forecast = forecast_run(session, run_id, get_settings())
    print_forecast(forecast)


def print_forecast(forecast) -> None:
    head = "what run #{} came to:" if forecast.outcome is not None else "forecast of run #{}:"
    console.print(head.format(forecast.run_id), markup=False, highlight=False)
    for line in forecast.lines():
        console.print(f"  {line}", markup=False, highlight=False)


@app.command("resend-failed")
def runs_resend_failed(
    run_id: int = typer.Argument(..., help="A finished run whose failed deliveries to resend."),
) -> None:
    """Send a finished run's failed deliveries once more, as a new run carrying the same items
    to exactly those readers (not to any who left or were suppressed since). Twice plans one
    resend: the second time names the first."""
    from digest.selection.resend import plan_resend_failed

    ensure_db()
    with session_scope() as session:
        planned = plan_resend_failed(session, run_id)
    if not planned.created:
        console.print(f"run #{run_id} was resent already as run #{planned.run_id}: nothing new "
                      f"planned ('digest runs resend-failed {planned.run_id}' resends what "
                      "failed again).", markup=False, highlight=False)
        return
    console.print(f"run #{planned.run_id}: resending {planned.planned} failed digest(s) of run "
                  f"#{run_id}.", markup=False, highlight=False)
    task_queue().deliver(planned.pending_ids)  # after the commit


@app.command("release")
def runs_release(run_id: int = typer.Argument(..., help="The held run's id.")) -> None:
    """Send a held run after all (its readers get the digest planned for its slot)."""
    from digest.selection import release_run

    ensure_db()
    with session_scope() as session:
        ids = release_run(session, run_id)
    console.print(f"run #{run_id} released: sending {len(ids)} digest(s).",
                  markup=False, highlight=False)
    task_queue().deliver(ids)  # after the commit, so the workers see the run as sending


@app.command("cancel")
def runs_cancel(
    run_id: int = typer.Argument(..., help="The run's id (a held one, typically)."),
    reason: str = typer.Option("cancelled by an operator", "--reason",
                               help="Kept in each cancelled delivery's log line."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Drop a run: its unsent digests never go, and what they carried goes to each reader's
    next digest instead."""
    from digest.models import DigestRun
    from digest.selection import cancel_run
    from digest.settings import get_settings

    ensure_db()
    with session_scope() as session:
        run = session.get(DigestRun, run_id)
        if run is None:
            raise ValidationError(f"no run with id {run_id}; 'digest runs' lists the recent ones")
        if not yes and not typer.confirm(
                f"Cancel run #{run_id} ({run.kind}, {run.slot_key}, {run.status})?"):
            raise typer.Exit(1)
        result = cancel_run(session, run_id, reason, get_settings())
    console.print(f"run #{run_id} cancelled: {result.deliveries} digest(s) will not go out; "
                  f"{result.items_given_back} item(s) go to those readers' next digest instead.",
                  markup=False, highlight=False)
