"""``digest demo``: the whole pipeline on the embedded default (a development helper)."""

from __future__ import annotations

from pathlib import Path

import typer

from digest.cli._common import console


def demo(
    var: Path = typer.Option(Path("var"), help="Folder for the SQLite file and the outbox."),  # noqa: B008
) -> None:
    """Run the whole pipeline on the embedded default and show what was delivered."""
    from digest.devtools import run_demo

    run_demo(var, console)
