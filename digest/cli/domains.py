"""``digest domains``: recipient domains paused after a policy refusal."""

from __future__ import annotations

import typer
from rich.table import Table
from sqlalchemy import select

from digest.cli._common import console, ensure_db, session_scope
from digest.errors import ValidationError

app = typer.Typer(help="Recipient domains paused after a policy refusal (5.7.x).",
                  no_args_is_help=True)


@app.command("paused")
def domains_paused() -> None:
    """Domains nothing is sent to for now, until when, and the reply that caused it."""
    from rich.text import Text

    from digest.models import DomainPause, utcnow

    ensure_db()
    with session_scope() as session:
        pauses = session.scalars(select(DomainPause).where(DomainPause.paused_until > utcnow())
                                 .order_by(DomainPause.paused_until, DomainPause.domain)).all()
        if not pauses:
            console.print("no domain is paused")
            return
        table = Table("domain", "paused until (UTC)", "since (UTC)", "delivery", "reason")
        for p in pauses:
            table.add_row(p.domain, f"{p.paused_until:%Y-%m-%d %H:%M:%S}",
                          f"{p.created_at:%Y-%m-%d %H:%M:%S}",
                          str(p.delivery_id) if p.delivery_id is not None else "",
                          Text(p.reason))  # a reply is not rich markup ("[internal]")
        console.print(table)


@app.command("resume")
def domains_resume(
    domain: str = typer.Argument(..., help="The paused domain, e.g. example.com."),
) -> None:
    """Lift a domain's pause now; its waiting deliveries go out with the next retry."""
    from digest.records import resume_domain

    ensure_db()
    with session_scope() as session:
        resumed = resume_domain(session, domain)
    if resumed is None:
        raise ValidationError(f"{domain.strip()!r} is not paused; see 'digest domains paused'")
    key, due = resumed
    console.print(f"resumed {key}: {due} waiting deliver{'y' if due == 1 else 'ies'} due now",
                  markup=False, highlight=False)
