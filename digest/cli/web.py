"""``digest web`` (the web server) and ``digest hash-password`` (its admin password)."""

from __future__ import annotations

import typer

from digest.cli._common import console, ensure_db
from digest.errors import ValidationError
from digest.settings import get_settings


def web(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Serve the subscriber pages, the admin UI (/admin) and the JSON API (/api/v1, /docs)."""
    import uvicorn

    from digest.settings import check_secrets

    check_secrets(get_settings())  # before anything listens: no known key in production
    ensure_db()
    uvicorn.run("digest.web:create_app", factory=True, host=host, port=port,
                proxy_headers=True, log_level="info")


def hash_password_command(
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="The admin password (asked for when not given)."),
) -> None:
    """Print the argon2 hash to put in DIGEST_ADMIN_PASSWORD_HASH."""
    from digest.web.admin import hash_password

    if len(password) < 12:
        raise ValidationError("use an admin password of at least 12 characters")
    console.print(hash_password(password), markup=False, highlight=False, soft_wrap=True)
