"""``digest db``: the database schema."""

from __future__ import annotations

import typer

from digest import db
from digest.cli._common import console
from digest.settings import get_settings

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest version."""
    url = get_settings().database_url
    db.upgrade(url)
    console.print(f"database at the latest schema: {url}")
