"""``digest deliveries``: the delivery log, and following a run (``--watch``)."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from digest.cli._common import console, ensure_db, session_scope
from digest.errors import ValidationError


def deliveries(
    run: int | None = typer.Option(None, "--run", help="Only this run."),
    status: str | None = typer.Option(
        None, "--status",
        help="pending, sending, sent, deferred, failed, skipped, cancelled, dry_run"),
    limit: int = typer.Option(200, help="Show at most this many rows."),
    watch: bool = typer.Option(
        False, "--watch", help="Follow the run (the newest one without --run) until it finishes."),
    interval: float = typer.Option(1.0, "--interval", min=0.1,
                                   help="Seconds between updates (--watch)."),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0, help="With --watch: give up after this many seconds (exit 1)."),
) -> None:
    """The delivery log, newest first (with --run: the run's rows, last planned reader
    first), with each run's progress."""
    from digest.delivery import describe_progress, runs_progress
    from digest.models import Delivery, DeliveryStatus, DigestRun
    from digest.subscribers import check_choice

    ensure_db()
    if status:
        check_choice("status", status, [s.value for s in DeliveryStatus])
    if watch:
        _watch_run(run, interval, timeout)
        return
    with session_scope() as session:
        q = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if run is not None:
            # A run's rows by reader, last planned first: the (run_id, subscriber_id) index
            # answers with a LIMIT (by id, a run of a million rows was read and sorted).
            q = (select(Delivery).where(Delivery.run_id == run)
                 .order_by(Delivery.subscriber_id.desc()).limit(limit))
        if status:
            q = q.where(Delivery.status == status)
        rows = session.scalars(q).all()
        # The server's reply and our note apart: whose words they are is part of the story.
        table = Table("id", "run", "email", "status", "items", "tries", "SMTP reply", "note",
                      "Message-ID", "updated")
        for d in rows:
            reply = d.smtp_reply or ""
            if d.smtp_code is not None and not reply.startswith(str(d.smtp_code)):
                reply = f"{d.smtp_code} {reply}".strip()
            # Neither is rich markup: a reply may hold "[...]".
            table.add_row(str(d.id), str(d.run_id), d.email, d.status, str(d.item_count),
                          str(d.attempts), Text(reply[:60]), Text((d.note or "")[:60]),
                          d.message_id or "", f"{d.updated_at:%Y-%m-%d %H:%M:%S}")
        console.print(table)
        run_ids = sorted({d.run_id for d in rows}, reverse=True)[:10]
        progress = runs_progress(session, run_ids)
        runs = Table("run", "kind", "slot", "status", "progress")
        for r in session.scalars(select(DigestRun).where(DigestRun.id.in_(run_ids))
                                 .order_by(DigestRun.id.desc())):
            runs.add_row(str(r.id), r.kind, r.slot_key, r.status, describe_progress(progress[r.id]))
        if run_ids:
            console.print(runs)


def _watch_run(run_id: int | None, interval: float, timeout: float | None) -> None:
    """A progress bar over the run's deliveries until none is pending, sending or deferred."""
    import time as clock

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from digest.delivery import describe_progress, run_progress
    from digest.models import DigestRun
    from digest.records import UNFINISHED

    with session_scope() as session:
        if run_id is None:
            run_id = session.scalar(select(func.max(DigestRun.id)))
            if run_id is None:
                raise ValidationError("there is no run to watch yet; plan one with 'digest send'")
        elif session.get(DigestRun, run_id) is None:
            raise ValidationError(
                f"no run with id {run_id}; 'digest deliveries' lists the recent ones")
    deadline = None if timeout is None else clock.monotonic() + timeout
    columns = (TextColumn(f"run {run_id}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[counts]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("", total=None, counts="")
        while True:
            with session_scope() as session:
                progress = run_progress(session, run_id)
            waiting = sum(progress.get(s, 0) for s in UNFINISHED)
            bar.update(task, total=progress["total"], completed=progress["total"] - waiting,
                       counts=describe_progress(progress))
            if not waiting:
                break
            if deadline is not None and clock.monotonic() >= deadline:
                raise ValidationError(
                    f"run {run_id} has not finished after {timeout:g} s: "
                    f"{describe_progress(progress)}; "
                    "deferred deliveries wait for their next attempt (see 'digest deliveries "
                    f"--run {run_id} --status deferred')")
            clock.sleep(interval)
    console.print(f"run {run_id} finished: {describe_progress(progress)}",
                  markup=False, highlight=False)

