"""``digest web`` (the web server) and ``digest hash-password`` (its admin password)."""

from __future__ import annotations

import typer

from digest.cli._common import console, ensure_db
from digest.errors import ConfigError, ValidationError
from digest.settings import get_settings


def web(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Serve the subscriber pages, the admin UI (/admin) and the JSON API (/api/v1, /docs)."""
    require_web_extra()
    import uvicorn

    from digest.settings import check_secrets

    check_secrets(get_settings())  # before anything listens: no known key in production
    ensure_db()
    uvicorn.run("digest.web:create_app", factory=True, host=host, port=port,
                proxy_headers=True, log_level="info",
                log_config=None)  # uvicorn's lines go through digest.logs like the rest


def require_web_extra() -> None:
    """One `error:` line naming the extra, not a traceback, when the web libraries are missing
    (an install of plain `digest`, or one missing a library the extra brings, like greenlet)."""
    try:
        import uvicorn  # noqa: F401

        import digest.web  # noqa: F401  # fastapi, sqladmin and the rest of the web extra
    except ImportError as exc:
        missing = _missing_module(exc)
        if missing is None or missing.split(".")[0] == "digest":
            raise  # a bug of ours, not a missing install
        raise ConfigError(f"the web server needs the web extra ({missing} is not installed): "
                          "pip install 'digest[web]'") from None


def _missing_module(exc: BaseException | None) -> str | None:
    """The module that is not installed: the error's own, or the one behind it (SQLAlchemy's
    asyncio raises a plain ImportError from greenlet's ModuleNotFoundError)."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def hash_password_command(
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="The admin password (asked for when not given)."),
) -> None:
    """Print the argon2 hash to put in DIGEST_ADMIN_PASSWORD_HASH."""
    require_web_extra()
    from digest.web.admin import hash_password

    if len(password) < 12:
        raise ValidationError("use an admin password of at least 12 characters")
    console.print(hash_password(password), markup=False, highlight=False, soft_wrap=True)
