"""``digest bounces``: process bounce reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from digest.cli._common import console, ensure_db, err
from digest.settings import get_settings

app = typer.Typer(help="Bounce reports (RFC 3464 delivery-status notifications) and complaints "
                  "(ARF feedback reports).",
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
    counts, policy pauses the domain, sender is reported for the operator. A complaint (an
    ARF feedback report: the reader pressed "spam") suppresses its reader at once.

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
    for _, o in report.outcomes:
        if o.complaint and o.result == "recorded" and not dry_run:
            console.print(f"complaint: {o.email} delivery #{o.delivery_id} ({o.diagnostic})",
                          markup=False, highlight=False, soft_wrap=True)
    for address in report.suppressed:
        console.print(f"suppressed: {address}", markup=False, highlight=False, soft_wrap=True)
    if dry_run:
        for source, o in report.outcomes:
            console.print(f"{source}: {o.reason}", markup=False, highlight=False, soft_wrap=True)
        console.print("dry run: nothing was changed", markup=False, highlight=False)
    console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(1)


@app.command("complaints")
def bounces_complaints(
    limit: int = typer.Option(50, "--limit", min=1, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per complaint."),
) -> None:
    """The latest complaints (ARF reports by mail, provider events): each reader was
    suppressed with reason complaint when it came in ('digest subscribers unsuppress' lifts it)."""
    import json

    from digest.bounces.complaints import recent_complaints
    from digest.cli._common import new_session

    ensure_db()
    with new_session() as session:
        rows = recent_complaints(session, limit)
        lines: list[dict[str, Any]] = [
            {"id": c.id, "address": c.email, "class": "complaint", "source": c.source,
             "feedback_type": c.feedback_type, "delivery_id": c.delivery_id,
             "detail": c.detail, "received": c.created_at.isoformat()} for c in rows]
    if as_json:
        for line in lines:
            typer.echo(json.dumps(line, ensure_ascii=False))
        return
    if not lines:
        console.print("no complaints", markup=False, highlight=False)
    for line in lines:
        delivery = f"delivery #{line['delivery_id']}" if line["delivery_id"] else "delivery pruned"
        console.print(f"{line['received'][:19]}  {line['address']}  {line['source']} "
                      f"{line['feedback_type']}  {delivery}  {line['detail']}", markup=False,
                      highlight=False, soft_wrap=True)
