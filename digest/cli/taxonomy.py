"""``digest taxonomy``: the themes, locations and content types subscribers choose from."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from digest.cli._common import console, ensure_db, session_scope

app = typer.Typer(help="Themes, locations and content types.", no_args_is_help=True)


@app.command("seed")
def taxonomy_seed(
    source: Path | None = typer.Argument(  # noqa: B008
        None, help="A JSON taxonomy file (themes, locations, content_types); the newsroom's "
        "published one (shipped with digest) by default."),
) -> None:
    """Add the newsroom's themes, locations (with their regions) and content types that are
    not known yet, so subscribers can choose them before the first ingest. Running it again
    adds nothing."""
    from digest import taxonomy

    names = taxonomy.read_published(source or taxonomy.PUBLISHED_FILE)
    ensure_db()
    with session_scope() as session:
        created = taxonomy.seed(session, names)
    for facet, new in created.items():
        label = facet.replace("_", " ")
        said = f"{len(new)} added: {', '.join(new)}" if new else "nothing new"
        console.print(f"{label}s: {said}", markup=False, highlight=False)


@app.command("list")
def taxonomy_list() -> None:
    """Every theme, location (with its region) and content type."""
    from digest import taxonomy

    ensure_db()
    table = Table("facet", "name", "region")
    with session_scope() as session:
        for name in taxonomy.list_names(session, "theme"):
            table.add_row("theme", name, "")
        for name, region in taxonomy.location_regions(session):
            table.add_row("location", name, region or "")
        for name in taxonomy.list_names(session, "content_type"):
            table.add_row("content type", name, "")
    console.print(table)
