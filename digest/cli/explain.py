"""``digest explain EMAIL ITEM``: why an item did or did not reach a reader, in plain words."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import typer

from digest.cli._common import console, ensure_db, parse_when, session_scope
from digest.settings import get_settings


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def explain(
    email: str = typer.Argument(..., help="The reader's address."),
    item: str = typer.Argument(..., help="The item: its id, URL or guid."),
    as_of: str | None = typer.Option(
        None, "--as-of", help="Clock for the reader's window (ISO date/time; default now)."),
    as_json: bool = typer.Option(False, "--json", help="The structured reasons, as JSON."),
) -> None:
    """Say why ITEM did or did not reach EMAIL: each filter and facet, the window, backfill,
    the reader's claims, the delivery that carried it, suppression, status, a paused domain."""
    from digest.selection.explain import explain as explain_item
    from digest.selection.explain import find_item
    from digest.subscribers import find_subscriber

    ensure_db()
    settings = get_settings()
    when = parse_when(as_of)
    with session_scope() as session:
        sub = find_subscriber(session, email)
        found = find_item(session, item)
        result = explain_item(session, sub, found, settings=settings, as_of=when)
    if as_json:
        console.print_json(json.dumps(dataclasses.asdict(result), default=_plain))
        return
    head, *rest = result.sentences
    console.print(head, markup=False, highlight=False, soft_wrap=True)
    for reason, sentence in zip(result.reasons, rest, strict=True):
        mark = "  ok " if reason.ok else "  no "
        console.print(mark + sentence, markup=False, highlight=False, soft_wrap=True)
