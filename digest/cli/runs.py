"""``digest runs``: list the runs; release or cancel a held one."""

from __future__ import annotations

import typer
from rich.table import Table
from sqlalchemy import select

from digest.cli._common import console, ensure_db, session_scope, task_queue
from digest.errors import ValidationError

app = typer.Typer(help="Digest runs: list them; release or cancel a held one.",
                  invoke_without_command=True)


@app.callback()
def runs_list(
    ctx: typer.Context,
    status: str | None = typer.Option(
        None, "--status", help="planned, sending, done, held, cancelled"),
    limit: int = typer.Option(20, min=1, help="Show at most this many runs."),
) -> None:
    """The recent runs, newest first: kind, slot, status and what each delivery came to."""
    if ctx.invoked_subcommand is not None:
        return
    from digest.delivery import describe_progress, runs_progress
    from digest.models import DigestRun, RunStatus
    from digest.subscribers import check_choice

    ensure_db()
    if status:
        check_choice("status", status, [s.value for s in RunStatus])
    with session_scope() as session:
        q = select(DigestRun).order_by(DigestRun.id.desc()).limit(limit)
        if status:
            q = q.where(DigestRun.status == status)
        runs = session.scalars(q).all()
        progress = runs_progress(session, [r.id for r in runs])
        table = Table("id", "kind", "slot", "status", "planned", "skipped", "deliveries",
                      "created (UTC)")
        for r in runs:
            table.add_row(str(r.id), r.kind + (" (dry run)" if r.dry_run else ""), r.slot_key,
                          r.status, str(r.planned_count), str(r.skipped_count),
                          describe_progress(progress[r.id]), f"{r.created_at:%Y-%m-%d %H:%M}")
        console.print(table)
        held = [r.id for r in runs if r.status == RunStatus.held]
    for run_id in held:
        console.print(f"run #{run_id} is held: 'digest runs release {run_id}' sends it, "
                      f"'digest runs cancel {run_id}' drops it.", markup=False, highlight=False)


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
