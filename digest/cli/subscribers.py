"""``digest subscribers``: add, list, leave, suppress, erase, import and export."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table
from sqlalchemy import select

from digest.cli._common import console, ensure_db, err, session_scope
from digest.errors import ValidationError
from digest.settings import get_settings

app = typer.Typer(help="Manage subscribers.", no_args_is_help=True)


@app.command("add")
def subscribers_add(
    email: str,
    filter_: list[str] = typer.Option(  # noqa: B008
        [], "--filter", "-f", help="themes=A|B;locations=C;types=News (repeatable)"),
    theme: list[str] = typer.Option([], "--theme", help="Shortcut for one filter's themes."),  # noqa: B008
    location: list[str] = typer.Option([], "--location"),  # noqa: B008
    content_type: list[str] = typer.Option([], "--type"),  # noqa: B008
    frequency: str | None = typer.Option(None, help="immediate | daily | weekly [new: weekly]"),
    tz: str | None = typer.Option(None, "--timezone", help="IANA time zone [new: UTC]"),
    weekday: str | None = typer.Option(None, help="monday..sunday [new: monday]"),
    hour: int | None = typer.Option(None, help="0-23, local time [new: 8]"),
    group_by: str | None = typer.Option(None, help="theme | location [new: theme]"),
    status: str | None = typer.Option(
        None, help="active | pending | unsubscribed | suppressed [new: active]; naming one "
        "re-activates a reader who left, or lifts a suppression (rule R5)"),
    create_taxonomy: bool = typer.Option(False, help="Create unknown themes/locations/types."),
) -> None:
    """Add a subscriber, or update the one with that address: an option not given keeps what
    they have (no filter option: their filters stay). A reader who unsubscribed or was
    suppressed, or an address on the suppression list, is refused unless --status is given."""
    from digest.subscribers import (
        FilterSpec,
        canonical_email,
        parse_filter,
        upsert_subscriber,
        who_left,
    )

    ensure_db()
    settings = get_settings()
    specs = [parse_filter(f) for f in filter_]
    if theme or location or content_type:
        specs.append(FilterSpec(list(theme), list(location), list(content_type)))
    with session_scope() as session:
        address = canonical_email(email, smtputf8=settings.smtputf8)
        left = who_left(session, [address]).get(address) if status is None else None
        if left is not None:
            raise ValidationError(
                f"{left.reason}; 'add' does not re-subscribe anyone silently: to re-activate them, "
                f"run 'digest subscribers add {address} --status active' (this also lifts a "
                "suppression)")
        sub, created = upsert_subscriber(
            session, address, smtputf8=settings.smtputf8, filters=specs or None,
            frequency=frequency, timezone=tz, weekday=weekday, hour=hour, group_by=group_by,
            status=status, lift_suppression=status is not None,
            suppression_detail="suppressed from the CLI", create_taxonomy=create_taxonomy)
        console.print(f"{'added' if created else 'updated'} subscriber #{sub.id} {sub.email} "
                      f"({sub.status})", markup=False, highlight=False)


@app.command("list")
def subscribers_list() -> None:
    """List subscribers with their filters."""
    from digest.models import Subscriber
    from digest.subscribers import WEEKDAYS, describe_filter, with_filters

    ensure_db()
    table = Table("id", "email", "status", "frequency", "when (local)", "filters")
    with session_scope() as session:
        for sub in session.scalars(select(Subscriber).order_by(Subscriber.id).options(
                *with_filters())):
            when = f"{WEEKDAYS[sub.weekday][:3]} {sub.hour:02d}:00 {sub.timezone}"
            filters = "\n".join(describe_filter(f) for f in sub.filters) or "everything"
            table.add_row(str(sub.id), sub.email, sub.status, sub.frequency, when, filters)
    console.print(table)


@app.command("unsubscribe")
def subscribers_unsubscribe(email: str) -> None:
    """Unsubscribe an address (as its own link would); planned digests to it are cancelled."""
    from digest.subscribers import find_subscriber, unsubscribe

    ensure_db()
    with session_scope() as session:
        sub = find_subscriber(session, email)
        unsubscribe(session, sub)
        console.print(f"unsubscribed {sub.email}", markup=False, highlight=False)


@app.command("suppress")
def subscribers_suppress(
    email: str,
    note: str = typer.Option("", "--note", help="Why (kept with the suppression)."),
) -> None:
    """Never send to this address again, whether or not it is a subscriber."""
    from digest.models import SuppressionReason
    from digest.subscribers import canonical_email, suppress

    ensure_db()
    with session_scope() as session:
        address = canonical_email(email, smtputf8=get_settings().smtputf8)
        row = suppress(session, address, SuppressionReason.admin,
                       note or "suppressed from the CLI")
        console.print(f"suppressed {row.email}", markup=False, highlight=False)


@app.command("unsuppress")
def subscribers_unsuppress(email: str) -> None:
    """Take an address off the suppression list (a suppressed subscriber becomes active)."""
    from digest.subscribers import unsuppress

    ensure_db()
    with session_scope() as session:
        if not unsuppress(session, email):
            raise ValidationError(f"{email.strip()!r} is not suppressed")
        console.print(f"unsuppressed {email.strip()}", markup=False, highlight=False)


@app.command("erase")
def subscribers_erase(
    email: str,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Erase a subscriber and everything about them (filters, delivery log, bounces); a
    suppression of the address is kept so it is never mailed again."""
    from digest.subscribers import erase_subscriber, find_subscriber

    ensure_db()
    with session_scope() as session:
        sub = find_subscriber(session, email)
        if not yes and not typer.confirm(f"Erase {sub.email} and their delivery log?"):
            raise typer.Exit(1)
        erased = erase_subscriber(session, sub)
    kept = "; the address stays suppressed" if erased.suppression_kept else ""
    console.print(f"erased {erased.email}: {erased.deliveries} deliveries, {erased.bounces} "
                  f"bounce report(s){kept}", markup=False, highlight=False)


@app.command("import")
def subscribers_import(source: Path) -> None:
    """Import subscribers from CSV (bad rows are reported with their line numbers)."""
    from digest.subscribers import import_csv

    ensure_db()
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise ValidationError(f"cannot read {source}: {reason}") from exc
    with session_scope() as session:
        report = import_csv(session, text, smtputf8=get_settings().smtputf8)
    for line, reason in report.skipped:  # one line each, whatever the width: for grep
        err.print(f"line {line}: {reason}", markup=False, highlight=False, soft_wrap=True)
    for line, reason in report.errors:
        err.print(f"line {line}: {reason}", markup=False, highlight=False)
    console.print(report.summary())
    if report.errors:
        raise typer.Exit(1)


@app.command("export")
def subscribers_export() -> None:
    """Write all subscribers as CSV to standard output."""
    from digest.subscribers import export_csv

    ensure_db()
    with session_scope() as session:
        sys.stdout.write(export_csv(session))
