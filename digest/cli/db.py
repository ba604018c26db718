"""``digest db``: the database schema."""

from __future__ import annotations

import typer

from digest import db
from digest.cli._common import console
from digest.settings import get_settings

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(
    seed: bool = typer.Option(
        True, "--seed/--no-seed",
        help="On a database that knows no theme, location or content type yet (a fresh "
             "install), add the newsroom's published taxonomy, so subscribers can choose "
             "before the first ingest."),
) -> None:
    """Create or migrate the schema to the latest version."""
    url = get_settings().database_url
    db.upgrade(url)
    console.print(f"database at the latest schema: {url}")
    if seed:
        from digest import taxonomy

        with db.session_scope(url) as session:
            created = taxonomy.seed_fresh(session)
        if created:
            console.print(f"a fresh install: the newsroom's taxonomy added ({created} names; "
                          "'digest taxonomy list' shows them)", markup=False, highlight=False)
