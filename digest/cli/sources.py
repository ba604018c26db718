"""``digest sources``: the registered sources the beat polls (ADR 0034)."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table
from rich.text import Text

from digest.cli._common import console, ensure_db, session_scope, task_queue
from digest.settings import get_settings

app = typer.Typer(help="Registered sources (feeds, listing pages, JSON) polled by the beat.",
                  no_args_is_help=True)

_HEALTH_STYLE = {"ok": "green", "new": "cyan", "paused": "dim", "failing": "yellow",
                 "stale": "bold red"}


def say(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "never"


@app.command("add")
def sources_add(
    url: str = typer.Argument(..., help="The feed's, listing page's or JSON's http(s) URL."),
    kind: str = typer.Option("feed", "--kind", help="feed, listing or json."),
    every: str = typer.Option("15m", "--every", help="How often: 15m, 1h, 1d (a minute at "
                                                     "least)."),
    content_type: str | None = typer.Option(None, "--content-type",
                                            help="Given to items that carry none."),
    location: str | None = typer.Option(None, "--location",
                                        help="Given to items that carry none."),
    language: str | None = typer.Option(None, "--language",
                                        help="Given to items that carry none (en, fr ...)."),
    backfill_pages: int = typer.Option(0, "--backfill-pages",
                                       help="Listing pages after the first read on the first "
                                            "poll, stored as archive (never mailed)."),
) -> None:
    """Register a source; the beat (or 'digest tick', 'digest sources poll') polls it now."""
    from digest.ingest.registry import add_source, format_interval

    ensure_db()
    settings = get_settings()
    with session_scope() as session:
        source = add_source(session, url, settings=settings, kind=kind, every=every,
                            content_type=content_type, location=location, language=language,
                            backfill_pages=backfill_pages)
        say(f"added source {source.id}: {source.url} ({source.kind.value}, every "
            f"{format_interval(source.every_seconds)}); due now")


@app.command("list")
def sources_list() -> None:
    """Every source, its health (red: failing for DIGEST_SOURCE_STALE_HOURS) and last poll."""
    from digest.ingest.registry import format_interval, health, list_sources
    from digest.models import utcnow

    ensure_db()
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        sources = list_sources(session)
        if not sources:
            say("no source is registered; add one with 'digest sources add URL'")
            return
        table = Table("id", "health", "kind", "every", "url", "last success (UTC)",
                      "failures", "items", "last error")
        for s in sources:
            word = health(s, now=now, stale_hours=settings.source_stale_hours)
            table.add_row(str(s.id), Text(word, style=_HEALTH_STYLE.get(word, "")),
                          s.kind.value, format_interval(s.every_seconds), Text(s.url),
                          _when(s.last_success_at), str(s.consecutive_failures),
                          str(s.items_added), Text(s.last_error or ""))
        console.print(table)


@app.command("show")
def sources_show(
    ref: str = typer.Argument(..., help="The source's id or URL."),
) -> None:
    """One source in full: settings, validators, health, counts, WebSub hub."""
    from digest.ingest.registry import format_interval, get_source, health
    from digest.models import utcnow

    ensure_db()
    settings = get_settings()
    with session_scope() as session:
        s = get_source(session, ref)
        word = health(s, now=utcnow(), stale_hours=settings.source_stale_hours)
        rows = [
            ("source", f"{s.id}: {s.url}"),
            ("kind", s.kind.value),
            ("every", format_interval(s.every_seconds)),
            ("defaults", ", ".join(f"{k} {v}" for k, v in (
                ("content type", s.default_content_type), ("location", s.default_location),
                ("language", s.default_language)) if v) or "none"),
            ("backfill pages", str(s.backfill_pages)),
            ("health", word),
            ("next poll", "paused" if s.paused else _when(s.next_poll_at)),
            ("last attempt", _when(s.last_attempt_at)),
            ("last success", _when(s.last_success_at)),
            ("last status", str(s.last_status) if s.last_status is not None else "none"),
            ("last error", s.last_error or "none"),
            ("failing since", _when(s.failing_since) if s.failing_since else "not failing"),
            ("consecutive failures", str(s.consecutive_failures)),
            ("polls", f"{s.polls} ({s.not_modified} not modified, {s.failures} failed)"),
            ("items added", str(s.items_added)),
            ("bytes fetched", str(s.bytes_fetched)),
            ("validators", f"ETag {s.etag or 'none'}; Last-Modified {s.last_modified or 'none'}"),
            ("WebSub hub", f"{s.hub_url} (topic {s.topic_url})" if s.hub_url else "none"),
        ]
        if s.websub_state is not None:
            rows.append(("WebSub", s.websub_state.value + (f": {s.websub_error}"
                                                           if s.websub_error else "")))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        style = _HEALTH_STYLE.get(value, "") if label == "health" else ""
        console.print(Text(f"{label:<{width}}  ") + Text(value, style=style), soft_wrap=True)


def _set_paused(ref: str, paused: bool) -> None:
    from digest.ingest.registry import set_paused

    ensure_db()
    with session_scope() as session:
        source = set_paused(session, ref, paused)
        say(f"source {source.id} {'paused' if paused else 'resumed: due now'}: {source.url}")


@app.command("pause")
def sources_pause(ref: str = typer.Argument(..., help="The source's id or URL.")) -> None:
    """Stop polling a source (its items stay)."""
    _set_paused(ref, True)


@app.command("resume")
def sources_resume(ref: str = typer.Argument(..., help="The source's id or URL.")) -> None:
    """Poll a paused source again, starting now."""
    _set_paused(ref, False)


@app.command("remove")
def sources_remove(ref: str = typer.Argument(..., help="The source's id or URL.")) -> None:
    """Forget a source; the items it brought stay."""
    from digest.ingest.registry import remove_source

    ensure_db()
    with session_scope() as session:
        source = remove_source(session, ref)
        say(f"removed source {source.id}: {source.url} (its items stay)")


@app.command("check")
def sources_check(
    url: str = typer.Argument(..., help="An http(s) URL, registered or not."),
    kind: str | None = typer.Option(None, "--kind", help="feed, listing or json (default: "
                                                         "the registered source's, else feed)."),
) -> None:
    """Fetch a URL once and print what a poll would store; stores nothing."""
    from digest.ingest.polling import check_source

    ensure_db()
    check = check_source(get_settings(), url, kind=kind)
    response = check.response
    moved = (f"; moved {'permanently' if response.moved_permanently else 'temporarily'} to "
             f"{response.final_url}" if response.final_url != check.url else "")
    say(f"{check.url}: HTTP {response.status}, {response.size} bytes, "
        f"{response.content_type or 'no Content-Type'}{moved}")
    say(f"read as {check.kind.value}"
        f"{' (registered: its defaults applied)' if check.registered else ''}: "
        f"{len(check.parsed.items)} item(s) would be stored")
    for item in check.parsed.items:
        when = f"{item.published_at:%Y-%m-%d}" if item.published_at else "undated"
        extras = ", ".join(part for part in (
            item.content_type, "; ".join(item.locations), item.language) if part)
        say(f"  - {when}  {item.title}  <{item.url or item.guid}>"
            + (f"  [{extras}]" if extras else ""))
    for warning in check.parsed.warnings:
        say(f"  left out: {warning}")
    if check.parsed.next_page_url:
        say(f"next page: {check.parsed.next_page_url}")
    if check.hub:
        say(f"WebSub hub: {check.hub[0]} (topic {check.hub[1]})")
    say("nothing was stored (a check)")


@app.command("poll")
def sources_poll(
    all_sources: bool = typer.Option(False, "--all", help="Every source not paused, due or "
                                                          "not."),
) -> None:
    """One polling pass now, as the beat's task does: the due sources (or all)."""
    from digest.ingest.polling import poll_due

    ensure_db()
    outcomes = poll_due(get_settings(), all_sources=all_sources, queue=task_queue())
    if not outcomes:
        say("no source is due" + ("" if all_sources else "; '--all' polls them anyway"))
    for o in outcomes:
        line = f"source {o.source_id} {o.url}: {o.status.replace('_', ' ')}"
        if o.status == "stored":
            line += f", {o.new_items} new item(s)"
        if o.error:
            line += f": {o.error}"
        if o.next_poll_at is not None:
            line += f"; next poll {_when(o.next_poll_at)} UTC"
        say(line)
