"""``digest demo``: the whole pipeline on the embedded default, no server needed.

SQLite under ./var, tasks in-process (no broker), and a local SMTP server (aiosmtpd) that
stores every message it receives as a .eml file in ./var/outbox. The clock is set to the
week of the demo listing so its items are fresh.
"""

from __future__ import annotations

import email
from datetime import UTC, datetime, time, timedelta
from email import policy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

if TYPE_CHECKING:
    from digest.settings import Settings

DEMO_LISTING = Path(__file__).resolve().parents[1] / "data" / "demo-newsroom.txt"

# (email, frequency, time zone, weekday, hour, group by, filters)
DEMO_SUBSCRIBERS = [
    ("amina.policing@example.org", "weekly", "Europe/Sarajevo", 0, 8, "theme",
     ["themes=Policing"]),
    ("marko.montenegro@example.org", "weekly", "Europe/Podgorica", 0, 9, "location",
     ["locations=OSCE Mission to Montenegro"]),
    ("lena.balkans@example.org", "weekly", "Europe/Vienna", 4, 17, "location",
     ["locations=South-Eastern Europe;types=News"]),
    ("aidai.youth@example.org", "weekly", "Asia/Bishkek", 1, 10, "theme",
     ["themes=Youth|Education", "locations=OSCE Programme Office in Bishkek"]),
    ("sam.gender@example.org", "weekly", "America/New_York", 2, 7, "theme",
     ["themes=Gender equality|Human rights;types=News"]),
    ("olga.elections@example.org", "immediate", "Europe/Warsaw", 0, 8, "theme",
     ["themes=Elections"]),
]


def demo_clock(published: list[datetime]) -> datetime:
    """The morning after the newest item of the listing."""
    newest = max(published)
    return datetime.combine(newest.date() + timedelta(days=1), time(9, 0), tzinfo=UTC)


def demo_settings(var: Path, smtp_port: int) -> Settings:
    """The environment's settings (DIGEST_*, .env) with the demo's own on top: tasks in
    this process, mail to the local server on ``smtp_port``, files under ``var``. The
    database is a SQLite file under ``var`` unless DIGEST_DATABASE_URL names one."""
    from digest.settings import Settings

    demo: dict[str, Any] = {
        "var_dir": var, "broker_url": "",  # no broker: the demo runs the tasks in-process
        "smtp_host": "127.0.0.1", "smtp_port": smtp_port, "smtp_starttls": False,
        "smtp_ssl": False, "smtp_user": None,
    }
    settings = Settings(**demo)  # validated like any settings
    if "database_url" in settings.model_fields_set:
        return settings
    return Settings(**demo, database_url=f"sqlite:///{var / 'digest.db'}")


def run_demo(var: Path, console: Console) -> None:
    from digest import db, ingest
    from digest.delivery.periodic import queue_for
    from digest.devtools.mailsink import MailSink
    from digest.models import Delivery, DigestRun
    from digest.selection import plan_scheduled_run
    from digest.subscribers import parse_filter, upsert_subscriber

    var = var.resolve()
    outbox = var / "outbox"
    var.mkdir(parents=True, exist_ok=True)
    with MailSink(outbox=outbox) as sink:
        settings = demo_settings(var, sink.port)
        db.upgrade(settings.database_url)
        items = ingest.parse_listing(DEMO_LISTING.read_text(encoding="utf-8"))
        clock = demo_clock([i.published_at for i in items if i.published_at])
        console.print(f"[bold]Demo clock:[/] {clock:%A %d %B %Y %H:%M} UTC "
                      f"(the week of the demo listing)")

        with db.session_scope(settings.database_url) as session:
            newest_run = select(DigestRun.id).order_by(DigestRun.id.desc()).limit(1)
            last_run = session.scalar(newest_run) or 0
            for address, freq, zone, weekday, hour, group_by, filters in DEMO_SUBSCRIBERS:
                upsert_subscriber(session, address, smtputf8=settings.smtputf8,
                                  filters=[parse_filter(f) for f in filters],
                                  frequency=freq, timezone=zone, weekday=weekday, hour=hour,
                                  group_by=group_by, create_taxonomy=True)
        console.print(f"{len(DEMO_SUBSCRIBERS)} subscribers ready")

        with db.session_scope(settings.database_url) as session:
            report = ingest.store_items(session, items, source=str(DEMO_LISTING.name), now=clock,
                                        max_age_days=settings.max_item_age_days,
                                        keep_complete=True)
        console.print(f"ingest: {report.summary()}")
        queue = queue_for(settings)  # in-process: the demo configures no broker
        queue.publish_items(report.new_item_ids)  # immediate alerts

        with db.session_scope(settings.database_url) as session:
            planned = plan_scheduled_run(session, "weekly", now=clock, everyone=True,
                                         settings=settings)
        queue.deliver(planned.pending_ids)

        with db.session_scope(settings.database_url) as session:
            rows = session.scalars(select(Delivery).where(Delivery.run_id > last_run)
                                   .order_by(Delivery.run_id, Delivery.id)).all()
            new_runs = select(DigestRun).where(DigestRun.id > last_run)
            runs = {r.id: r for r in session.scalars(new_runs)}
            received = {m.parsed()["Message-ID"]: m for m in sink.messages}
            if not rows:
                console.print("\n[bold]Nothing new to send:[/] no new items since the last run "
                              f"(weekly run for this slot is #{planned.run_id}). "
                              f"Messages from earlier runs are in {_shown(outbox)}.")
                return
            table = Table(title="Deliveries of this demo run", show_lines=False)
            for col in ("subscriber", "run", "items", "status", "Message-ID", "HTML to open"):
                table.add_column(col, overflow="fold")
            for d in rows:
                html_path = ""
                msg = received.get(d.message_id)
                if msg is not None:
                    html_path = _shown(_write_html(msg, outbox))
                table.add_row(d.email, f"#{d.run_id} {runs[d.run_id].kind}", str(d.item_count),
                              d.status, d.message_id or "", html_path)
        console.print(table)
        console.print(f"{len(sink.messages)} message(s) received by the local SMTP server; "
                      f".eml files in {_shown(outbox)}")


def _shown(path: Path) -> str:
    """Relative to the working directory when it is below it: short enough to click."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write_html(message, outbox: Path) -> Path:
    parsed = email.message_from_bytes(message.data, policy=policy.default)
    body = parsed.get_body(preferencelist=("html",))
    target = (message.path.with_suffix(".html") if message.path
              else outbox / f"{parsed['Message-ID'].strip('<>')}.html")
    target.write_text(body.get_content() if body else "", encoding="utf-8")
    return target
