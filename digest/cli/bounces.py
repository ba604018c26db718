"""``digest bounces``: process bounce reports."""

from __future__ import annotations

from pathlib import Path

import typer

from digest.cli._common import console, ensure_db, err
from digest.settings import get_settings

app = typer.Typer(help="Bounce reports (RFC 3464 delivery-status notifications).",
                  no_args_is_help=True)


@app.command("process")
def bounces_process(
    path: Path = typer.Argument(..., help="A Maildir folder, an mbox file or one message file."),  # noqa: B008
    fmt: str = typer.Option("auto", "--format", help="maildir | mbox | file | auto (folder: "
                            "Maildir; file: mbox if it starts with 'From ', else one message)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Change nothing; say what would be "
                                 "done."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per message: source, "
                                 "recipients (address, status, class) and action, or error."),
) -> None:
    """Tie each bounce to its delivery and act on whose fault it is: hard suppresses, soft
    counts, policy pauses the domain, sender is reported for the operator.

    The mailbox is left as it is; processing it again changes nothing.
    """
    import json

    from digest.bounces import process_mailbox

    ensure_db()
    report = process_mailbox(path, fmt, settings=get_settings(), dry_run=dry_run)
    if as_json:
        for line in report.as_json_lines():
            typer.echo(json.dumps(line, ensure_ascii=False))
        if report.errors:
            raise typer.Exit(1)
        return
    for key, reason in report.errors:
        err.print(f"{key}: {reason}", markup=False, highlight=False, soft_wrap=True)
    for o in report.policy_rejections:
        console.print(f"policy rejection (not suppressed): {o.email} delivery #{o.delivery_id} "
                      f"{o.status_code} {o.diagnostic[:160]}", markup=False, highlight=False,
                      soft_wrap=True)
    for o in report.sender_problems:
        console.print(f"about our sender, check the set-up: delivery #{o.delivery_id} "
                      f"{o.status_code or ''} {o.diagnostic[:160]}", markup=False,
                      highlight=False, soft_wrap=True)
    for address in report.suppressed:
        console.print(f"suppressed: {address}", markup=False, highlight=False, soft_wrap=True)
    if dry_run:
        for source, o in report.outcomes:
            console.print(f"{source}: {o.reason}", markup=False, highlight=False, soft_wrap=True)
        console.print("dry run: nothing was changed", markup=False, highlight=False)
    console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(1)
