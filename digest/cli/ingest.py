"""``digest ingest``: bring items in."""

from __future__ import annotations

import sys

import typer

from digest.cli._common import console, ensure_db, err, task_queue
from digest.settings import get_settings

app = typer.Typer(help="Bring items in.", no_args_is_help=True)


def _after_ingest(report) -> None:
    console.print(report.summary(), markup=False, highlight=False)
    for line in report.unfiled:
        err.print(f"warning: {line} (kept for review: 'digest taxonomy review', then "
                  "'digest taxonomy file NAME --as theme|location|content-type' tags its items)",
                  markup=False, highlight=False,
                  soft_wrap=True)
    task_queue().publish_items(report.new_item_ids)


@app.command("listing")
def ingest_listing(
    source: str = typer.Argument(
        ..., help="The newsroom's listing: its HTML page or the text form, a file or an "
        "http(s) URL."),
    backfill_pages: int = typer.Option(
        0, "--backfill-pages", min=0,
        help="Also follow the page's next link up to N pages, stored as archive backfill "
        "(never mailed)."),
) -> None:
    """Ingest a newsroom listing (its HTML page or the seed's text form)."""
    from digest import ingest

    ensure_db()
    report = ingest.ingest_listing(source, settings=get_settings(),
                                   backfill_pages=backfill_pages)
    for line in report.rejected:
        err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    _after_ingest(report)


@app.command("feed")
def ingest_feed(
    source: str = typer.Argument(..., help="RSS/Atom file path or http(s) URL."),
) -> None:
    """Ingest an RSS 2.0 or Atom feed."""
    from digest import ingest

    ensure_db()
    _after_ingest(ingest.ingest_feed(source, settings=get_settings()))


@app.command("json")
def ingest_json(
    source: str = typer.Argument(..., help="A JSON file ('-' for standard input)."),
) -> None:
    """Ingest items given as JSON (an object or a list of objects)."""
    from digest import ingest

    ensure_db()
    text = sys.stdin.read() if source == "-" else source
    _after_ingest(ingest.ingest_json(text, settings=get_settings()))
