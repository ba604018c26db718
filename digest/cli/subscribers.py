"""The operator's entry point: ``digest ...`` (Typer + rich).

Bad input ends in a one-line ``error: ...`` and exit code 1 (2 for usage errors), never a
traceback.
"""

from __future__ import annotations

import sys
from datetime import datetime, time, timezone
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError as PydanticValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import db
from digest.errors import DigestError, ValidationError
from digest.settings import describe_invalid, get_settings

app = typer.Typer(help="Digest: newsroom digests by email.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
ingest_app = typer.Typer(help="Bring items in.", no_args_is_help=True)
subs_app = typer.Typer(help="Manage subscribers.", no_args_is_help=True)
send_app = typer.Typer(help="Plan and send digests.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.add_typer(subs_app, name="subscribers")
app.add_typer(send_app, name="send")

console = Console()
err = Console(stderr=True)


def parse_when(value: str | None, *, end_of_day: bool = False) -> datetime | None:
    """ISO date or datetime; a date means its start (or end) in UTC."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).date()
            return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"bad date {value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[+00:00]") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _queue():
    """Where the CLI's work goes: the broker when one is configured, else this process."""
    from digest.queue import queue_for

    return queue_for(get_settings())


def _session() -> Session:
    return db._sessionmaker(get_settings().database_url)()


def _ensure_db() -> None:
    db.upgrade()


# --- db ---------------------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest version."""
    db.upgrade()
    console.print(f"database at the latest schema: {get_settings().database_url}")


# --- ingest -----------------------------------------------------------------------------------

def _after_ingest(report) -> None:
    console.print(report.summary())
    _queue().publish_items(report.new_item_ids)


@ingest_app.command("listing")
def ingest_listing(source: Path = typer.Argument(..., help="A newsroom listing text file.")) -> None:
    """Ingest a newsroom listing in the seed's text format."""
    from digest import ingest

    _ensure_db()
    _after_ingest(ingest.ingest_listing(source))


@ingest_app.command("feed")
def ingest_feed(source: str = typer.Argument(..., help="RSS/Atom file path or http(s) URL.")) -> None:
    """Ingest an RSS 2.0 or Atom feed."""
    from digest import ingest

    _ensure_db()
    _after_ingest(ingest.ingest_feed(source))


@ingest_app.command("json")
def ingest_json(source: str = typer.Argument(..., help="A JSON file ('-' for standard input).")) -> None:
    """Ingest items given as JSON (an object or a list of objects)."""
    from digest import ingest

    _ensure_db()
    text = sys.stdin.read() if source == "-" else source
    _after_ingest(ingest.ingest_json(text))


# --- subscribers ------------------------------------------------------------------------------

@subs_app.command("add")
def subscribers_add(
    email: str,
    filter_: list[str] = typer.Option([], "--filter", "-f", help="themes=A|B;locations=C;types=News (repeatable)"),
    theme: list[str] = typer.Option([], "--theme", help="Shortcut for one filter's themes."),
    location: list[str] = typer.Option([], "--location"),
    content_type: list[str] = typer.Option([], "--type"),
    frequency: str = typer.Option("weekly", help="immediate | daily | weekly"),
    tz: str = typer.Option("UTC", "--timezone", help="IANA time zone"),
    weekday: str = typer.Option("monday"),
    hour: int = typer.Option(8),
    group_by: str = typer.Option("theme", help="theme | location"),
    create_taxonomy: bool = typer.Option(False, help="Create unknown themes/locations/types."),
) -> None:
    """Add a subscriber (or update the one with that address)."""
    from digest.subscribers import FilterSpec, parse_filter, upsert_subscriber

    _ensure_db()
    specs = [parse_filter(f) for f in filter_]
    if theme or location or content_type:
        specs.append(FilterSpec(list(theme), list(location), list(content_type)))
    with db.session_scope() as session:
        sub, created = upsert_subscriber(session, email, filters=specs, frequency=frequency,
                                         timezone=tz, weekday=weekday, hour=hour,
                                         group_by=group_by, create_taxonomy=create_taxonomy)
        console.print(f"{'added' if created else 'updated'} subscriber #{sub.id} {sub.email}")


@subs_app.command("list")
def subscribers_list() -> None:
    """List subscribers with their filters."""
    from digest.models import Subscriber
    from digest.subscribers import WEEKDAYS, describe_filter, with_filters

    _ensure_db()
    table = Table("id", "email", "status", "frequency", "when (local)", "filters")
    with db.session_scope() as session:
        for sub in session.scalars(select(Subscriber).order_by(Subscriber.id).options(
                *with_filters())):
            when = f"{WEEKDAYS[sub.weekday][:3]} {sub.hour:02d}:00 {sub.timezone}"
            filters = "\n".join(describe_filter(f) for f in sub.filters) or "everything"
            table.add_row(str(sub.id), sub.email, sub.status, sub.frequency, when, filters)
    console.print(table)


@subs_app.command("unsubscribe")
def subscribers_unsubscribe(email: str) -> None:
    """Unsubscribe an address (as its own link would); planned digests to it are cancelled."""
    from digest.subscribers import find_subscriber, unsubscribe

    _ensure_db()
    with db.session_scope() as session:
        sub = find_subscriber(session, email)
        unsubscribe(session, sub)
        console.print(f"unsubscribed {sub.email}", markup=False, highlight=False)


@subs_app.command("suppress")
def subscribers_suppress(
    email: str,
    note: str = typer.Option("", "--note", help="Why (kept with the suppression)."),
) -> None:
    """Never send to this address again, whether or not it is a subscriber."""
    from digest.subscribers import canonical_email, suppress

    _ensure_db()
    with db.session_scope() as session:
        row = suppress(session, canonical_email(email), "admin", note or "suppressed from the CLI")
        console.print(f"suppressed {row.email}", markup=False, highlight=False)


@subs_app.command("unsuppress")
def subscribers_unsuppress(email: str) -> None:
    """Take an address off the suppression list (a suppressed subscriber becomes active)."""
    from digest.subscribers import unsuppress

    _ensure_db()
    with db.session_scope() as session:
        if not unsuppress(session, email):
            raise ValidationError(f"{email.strip()!r} is not suppressed")
        console.print(f"unsuppressed {email.strip()}", markup=False, highlight=False)


@subs_app.command("erase")
def subscribers_erase(
    email: str,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Erase a subscriber and everything about them (filters, delivery log, bounces); a
    suppression of the address is kept so it is never mailed again."""
    from digest.subscribers import erase_subscriber, find_subscriber

    _ensure_db()
    with db.session_scope() as session:
        sub = find_subscriber(session, email)
        if not yes and not typer.confirm(f"Erase {sub.email} and their delivery log?"):
            raise typer.Exit(1)
        erased = erase_subscriber(session, sub)
    kept = "; the address stays suppressed" if erased.suppression_kept else ""
    console.print(f"erased {erased.email}: {erased.deliveries} deliveries, {erased.bounces} "
                  f"bounce report(s){kept}", markup=False, highlight=False)


@subs_app.command("import")
def subscribers_import(source: Path) -> None:
    """Import subscribers from CSV (bad rows are reported with their line numbers)."""
    from digest.subscribers import import_csv

    _ensure_db()
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {source}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
    with db.session_scope() as session:
        report = import_csv(session, text)
    for line, reason in report.errors:
        err.print(f"line {line}: {reason}", markup=False, highlight=False)
    console.print(report.summary())
    if report.errors:
        raise typer.Exit(1)


@subs_app.command("export")
def subscribers_export() -> None:
    """Write all subscribers as CSV to standard output."""
    from digest.subscribers import export_csv

    _ensure_db()
    with db.session_scope() as session:
        sys.stdout.write(export_csv(session))


# --- send -------------------------------------------------------------------------------------

def _report_run(planned, dry_run: bool) -> None:
    if not planned.created:
        console.print(f"run #{planned.run_id} already exists for this slot: nothing new planned.")
        return
    verb = "would send" if dry_run else "sending"
    console.print(f"run #{planned.run_id}: {verb} {planned.planned} digest(s); "
                  f"{planned.skipped} empty digest(s) skipped.")
    if dry_run:
        if planned.pending_ids:
            console.print(f"see them with 'digest deliveries --run {planned.run_id}' and "
                          f"'digest preview --delivery {planned.pending_ids[0]}'; nothing was sent",
                          markup=False, highlight=False)
        return
    _queue().deliver(planned.pending_ids)


def _plan(fn):
    # A dry run is kept too: its rows (status dry_run) are what an operator previews.
    session = _session()
    try:
        planned = fn(session)
        session.commit()
        return planned
    finally:
        session.close()


def _send_scheduled(frequency: str, now: bool, dry_run: bool, as_of: Optional[str]) -> None:
    from digest.schedule import plan_due_slots, plan_scheduled_run

    _ensure_db()
    clock = parse_when(as_of)
    if now:
        planned = _plan(lambda s: plan_scheduled_run(s, frequency, now=clock, everyone=True,
                                                     dry_run=dry_run))
        _report_run(planned, dry_run)
        return
    # This hour's slot and any missed since the last one planned, in one transaction.
    plans = _plan(lambda s: plan_due_slots(s, frequency, now=clock, dry_run=dry_run))
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
            _queue().deliver(run.pending_ids)


@send_app.command("weekly")
def send_weekly(
    now: bool = typer.Option(False, "--now", help="Everyone weekly, not only those due this hour."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be sent; change nothing."),
    as_of: Optional[str] = typer.Option(None, help="Pretend the clock is this (ISO date/time)."),
) -> None:
    """Plan and send the weekly digests of this hour's slot and of any slot missed since the
    last one planned (DIGEST_CATCH_UP_HOURS back); late ones are held."""
    _send_scheduled("weekly", now, dry_run, as_of)


@send_app.command("daily")
def send_daily(
    now: bool = typer.Option(False, "--now"),
    dry_run: bool = typer.Option(False, "--dry-run"),
    as_of: Optional[str] = typer.Option(None),
) -> None:
    """Plan and send the daily digests of this hour's slot and of any missed (as weekly)."""
    _send_scheduled("daily", now, dry_run, as_of)


@send_app.command("adhoc")
def send_adhoc(
    theme: list[str] = typer.Option([], "--theme"),
    location: list[str] = typer.Option([], "--location"),
    content_type: list[str] = typer.Option([], "--type"),
    date_from: Optional[str] = typer.Option(None, "--from", help="Published on or after (YYYY-MM-DD)."),
    date_to: Optional[str] = typer.Option(None, "--to", help="Published on or before (YYYY-MM-DD)."),
    item: list[int] = typer.Option([], "--item", help="Item id (repeatable)."),
    frequency: list[str] = typer.Option([], "--frequency", help="Only subscribers of this frequency."),
    key: Optional[str] = typer.Option(None, help="A new key to send the same selection again."),
    dry_run: bool = typer.Option(False, "--dry-run"),
) -> None:
    """Send chosen items now to every subscriber whose preferences they match."""
    from digest.select import AdhocQuery, plan_adhoc_run
    from digest.subscribers import check_choice

    _ensure_db()
    for f in frequency:
        check_choice("frequency", f, ["immediate", "daily", "weekly"])
    query = AdhocQuery(tuple(theme), tuple(location), tuple(content_type), parse_when(date_from),
                       parse_when(date_to, end_of_day=True), tuple(item), tuple(frequency))
    planned = _plan(lambda s: plan_adhoc_run(s, query, dry_run=dry_run,
                                             slot_key=f"adhoc:{key}" if key else None))
    _report_run(planned, dry_run)


# --- preview and log --------------------------------------------------------------------------

@app.command("preview")
def preview(
    email: Optional[str] = typer.Argument(None, help="The subscriber whose next digest to show."),
    delivery: Optional[int] = typer.Option(
        None, "--delivery", help="Show this delivery's message instead (a dry run's too)."),
    as_of: Optional[str] = typer.Option(None, help="Clock for the window (ISO date/time)."),
    out: Path = typer.Option(None, help="Folder for the files (default: <var>/preview)."),
) -> None:
    """Write the HTML and text digest this subscriber would get, or that a planned delivery
    carries; sends and changes nothing."""
    from digest.delivery import render_delivery
    from digest.models import Subscriber
    from digest.render import Recipient, get_renderer, render_items_from_models
    from digest.select import preview_items
    from digest.subscribers import canonical_email as normalise_address
    from digest.tokens import links_for

    if (email is None) == (delivery is None):
        raise ValidationError("give a subscriber's address or --delivery ID (one of the two)")
    _ensure_db()
    settings = get_settings()
    with db.session_scope() as session:
        if delivery is not None:
            rendered = render_delivery(session, delivery)
            if rendered is None:
                raise ValidationError(f"no delivery {delivery} that carries items; see "
                                      "'digest deliveries'")
            stem, count = f"delivery-{delivery}", _delivery_item_count(session, delivery)
        else:
            address = normalise_address(email)
            sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
            if sub is None:
                raise ValidationError(f"no subscriber {address}; see 'digest subscribers list'")
            items = preview_items(session, sub, as_of=parse_when(as_of))
            links = links_for(sub.id)
            rendered = get_renderer("digest").render(
                Recipient(sub.id, sub.email, sub.group_by, links["manage_url"],
                          links["unsubscribe_url"], None, sub.timezone),
                render_items_from_models(items))
            stem, count = address.replace("@", "_at_"), len(items)
    folder = out or settings.var_dir / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    html_path, text_path = folder / f"{stem}.html", folder / f"{stem}.txt"
    html_path.write_text(rendered.html, encoding="utf-8")
    text_path.write_text(rendered.text, encoding="utf-8")
    console.print(f"{count} item(s); subject: {rendered.subject}", markup=False, highlight=False)
    console.print(f"HTML: {html_path}\ntext: {text_path}", markup=False, highlight=False)


def _delivery_item_count(session: Session, delivery_id: int) -> int:
    from digest.models import Delivery

    return session.scalar(select(Delivery.item_count).where(Delivery.id == delivery_id)) or 0


@app.command("deliveries")
def deliveries(
    run: Optional[int] = typer.Option(None, "--run", help="Only this run."),
    status: Optional[str] = typer.Option(
        None, "--status", help="pending, sending, sent, deferred, failed, skipped, cancelled, dry_run"),
    limit: int = typer.Option(200, help="Show at most this many rows."),
    watch: bool = typer.Option(
        False, "--watch", help="Follow the run (the newest one without --run) until it finishes."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between updates (--watch)."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", min=0, help="With --watch: give up after this many seconds (exit 1)."),
) -> None:
    """The delivery log, newest first, with each run's progress."""
    from digest.delivery import describe_progress, runs_progress
    from digest.models import Delivery, DeliveryStatus, DigestRun
    from digest.subscribers import check_choice

    _ensure_db()
    if status:
        check_choice("status", status, [s.value for s in DeliveryStatus])
    if watch:
        _watch_run(run, interval, timeout)
        return
    with db.session_scope() as session:
        q = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if run is not None:
            q = q.where(Delivery.run_id == run)
        if status:
            q = q.where(Delivery.status == status)
        rows = session.scalars(q).all()
        table = Table("id", "run", "email", "status", "items", "tries", "SMTP", "Message-ID", "updated")
        for d in rows:
            table.add_row(str(d.id), str(d.run_id), d.email, d.status, str(d.item_count),
                          str(d.attempts), f"{d.smtp_code or ''} {(d.smtp_reply or '')[:40]}".strip(),
                          d.message_id or "", f"{d.updated_at:%Y-%m-%d %H:%M:%S}")
        console.print(table)
        run_ids = sorted({d.run_id for d in rows}, reverse=True)[:10]
        progress = runs_progress(session, run_ids)
        runs = Table("run", "kind", "slot", "status", "progress")
        for r in session.scalars(select(DigestRun).where(DigestRun.id.in_(run_ids)).order_by(DigestRun.id.desc())):
            runs.add_row(str(r.id), r.kind, r.slot_key, r.status, describe_progress(progress[r.id]))
        if run_ids:
            console.print(runs)


def _watch_run(run_id: Optional[int], interval: float, timeout: Optional[float]) -> None:
    """A progress bar over the run's deliveries until none is pending, sending or deferred."""
    import time as clock

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from digest.delivery import UNFINISHED, describe_progress, run_progress
    from digest.models import DigestRun

    with db.session_scope() as session:
        if run_id is None:
            run_id = session.scalar(select(func.max(DigestRun.id)))
            if run_id is None:
                raise ValidationError("there is no run to watch yet; plan one with 'digest send'")
        elif session.get(DigestRun, run_id) is None:
            raise ValidationError(f"no run with id {run_id}; 'digest deliveries' lists the recent ones")
    deadline = None if timeout is None else clock.monotonic() + timeout
    columns = (TextColumn(f"run {run_id}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[counts]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("", total=None, counts="")
        while True:
            with db.session_scope() as session:
                progress = run_progress(session, run_id)
            waiting = sum(progress.get(s, 0) for s in UNFINISHED)
            bar.update(task, total=progress["total"], completed=progress["total"] - waiting,
                       counts=describe_progress(progress))
            if not waiting:
                break
            if deadline is not None and clock.monotonic() >= deadline:
                raise ValidationError(
                    f"run {run_id} has not finished after {timeout:g} s: {describe_progress(progress)}; "
                    "deferred deliveries wait for their next attempt (see 'digest deliveries "
                    f"--run {run_id} --status deferred')")
            clock.sleep(interval)
    console.print(f"run {run_id} finished: {describe_progress(progress)}",
                  markup=False, highlight=False)


@app.command("web")
def web(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Serve the subscriber pages, the admin UI (/admin) and the JSON API (/api/v1, /docs)."""
    import uvicorn

    from digest.settings import check_secrets

    check_secrets(get_settings())  # before anything listens: no known key in production
    _ensure_db()
    uvicorn.run("digest.web:create_app", factory=True, host=host, port=port,
                proxy_headers=True, log_level="info")


@app.command("hash-password")
def hash_password_command(
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="The admin password (asked for when not given)."),
) -> None:
    """Print the argon2 hash to put in DIGEST_ADMIN_PASSWORD_HASH."""
    from digest.web.admin import hash_password

    if len(password) < 12:
        raise ValidationError("use an admin password of at least 12 characters")
    console.print(hash_password(password), markup=False, highlight=False, soft_wrap=True)


@app.command("demo")
def demo(
    var: Path = typer.Option(Path("var"), help="Folder for the SQLite file and the outbox."),
) -> None:
    """Run the whole pipeline on the embedded default and show what was delivered."""
    from digest.devtools import run_demo

    run_demo(var, console)


# --- bounces ----------------------------------------------------------------------------------

bounces_app = typer.Typer(help="Bounce reports (RFC 3464 delivery-status notifications).",
                          no_args_is_help=True)
app.add_typer(bounces_app, name="bounces")


@bounces_app.command("process")
def bounces_process(
    path: Path = typer.Argument(..., help="A Maildir folder, an mbox file or one message file."),
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

    _ensure_db()
    report = process_mailbox(path, fmt, dry_run=dry_run)
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


# --- domains ----------------------------------------------------------------------------------

domains_app = typer.Typer(help="Recipient domains paused after a policy refusal (5.7.x).",
                          no_args_is_help=True)
app.add_typer(domains_app, name="domains")


@domains_app.command("paused")
def domains_paused() -> None:
    """Domains nothing is sent to for now, until when, and the reply that caused it."""
    from rich.text import Text

    from digest.models import DomainPause, utcnow

    _ensure_db()
    with db.session_scope() as session:
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


@domains_app.command("resume")
def domains_resume(
    domain: str = typer.Argument(..., help="The paused domain, e.g. example.com."),
) -> None:
    """Lift a domain's pause now; its waiting deliveries go out with the next retry."""
    from digest.delivery import resume_domain

    _ensure_db()
    with db.session_scope() as session:
        resumed = resume_domain(session, domain)
    if resumed is None:
        raise ValidationError(f"{domain.strip()!r} is not paused; see 'digest domains paused'")
    key, due = resumed
    console.print(f"resumed {key}: {due} waiting deliver{'y' if due == 1 else 'ies'} due now",
                  markup=False, highlight=False)


# --- runs -------------------------------------------------------------------------------------

runs_app = typer.Typer(help="Digest runs: list them; release or cancel a held one.",
                       invoke_without_command=True)
app.add_typer(runs_app, name="runs")


@runs_app.callback()
def runs_list(
    ctx: typer.Context,
    status: Optional[str] = typer.Option(
        None, "--status", help="planned, sending, done, held, cancelled"),
    limit: int = typer.Option(20, min=1, help="Show at most this many runs."),
) -> None:
    """The recent runs, newest first: kind, slot, status and what each delivery came to."""
    if ctx.invoked_subcommand is not None:
        return
    from digest.delivery import describe_progress, runs_progress
    from digest.models import DigestRun, RunStatus
    from digest.subscribers import check_choice

    _ensure_db()
    if status:
        check_choice("status", status, [s.value for s in RunStatus])
    with db.session_scope() as session:
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
        held = [r.id for r in runs if r.status == RunStatus.held.value]
    for run_id in held:
        console.print(f"run #{run_id} is held: 'digest runs release {run_id}' sends it, "
                      f"'digest runs cancel {run_id}' drops it.", markup=False, highlight=False)


@runs_app.command("release")
def runs_release(run_id: int = typer.Argument(..., help="The held run's id.")) -> None:
    """Send a held run after all (its readers get the digest planned for its slot)."""
    from digest.schedule import release_run

    _ensure_db()
    with db.session_scope() as session:
        ids = release_run(session, run_id)
    console.print(f"run #{run_id} released: sending {len(ids)} digest(s).",
                  markup=False, highlight=False)
    _queue().deliver(ids)  # after the commit, so the workers see the run as sending


@runs_app.command("cancel")
def runs_cancel(
    run_id: int = typer.Argument(..., help="The run's id (a held one, typically)."),
    reason: str = typer.Option("cancelled by an operator", "--reason",
                               help="Kept in each cancelled delivery's log line."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Drop a run: its unsent digests never go, and what they carried goes to each reader's
    next digest instead."""
    from digest.models import DigestRun
    from digest.schedule import cancel_run

    _ensure_db()
    with db.session_scope() as session:
        run = session.get(DigestRun, run_id)
        if run is None:
            raise ValidationError(f"no run with id {run_id}; 'digest runs' lists the recent ones")
        if not yes and not typer.confirm(
                f"Cancel run #{run_id} ({run.kind}, {run.slot_key}, {run.status})?"):
            raise typer.Exit(1)
        result = cancel_run(session, run_id, reason)
    console.print(f"run #{run_id} cancelled: {result.deliveries} digest(s) will not go out; "
                  f"{result.items_given_back} item(s) go to those readers' next digest instead.",
                  markup=False, highlight=False)


def main() -> None:
    try:
        app()
    except DigestError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except PydanticValidationError as exc:  # the settings did not load
        err.print(f"error: {describe_invalid(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
