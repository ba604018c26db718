"""The operator's entry point: ``digest ...`` (Typer + rich), one module per command group.

Bad input ends in a one-line ``error: ...`` and exit code 1 (2 for usage errors), never a
traceback; so does a database or broker that does not answer (``digest: the database at
host:port is unreachable (...); is PostgreSQL running?``, ``cli.outages``).
Typer declares options as parameter defaults, hence the ``noqa: B008`` where
ruff takes one for a shared mutable default.
"""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError as PydanticValidationError

from digest.cli import (
    bounces,
    db,
    deliveries,
    demo,
    domains,
    explain,
    ingest,
    preview,
    prune,
    runs,
    send,
    sources,
    subscribers,
    taxonomy,
    tick,
    web,
)
from digest.cli._common import err
from digest.errors import DigestError
from digest.settings import describe_invalid

__all__ = ["app", "main"]

app = typer.Typer(help="Digest: newsroom digests by email.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
# In this order: it is the order of `digest --help`.
app.add_typer(db.app, name="db")
app.add_typer(ingest.app, name="ingest")
app.add_typer(sources.app, name="sources")
app.add_typer(subscribers.app, name="subscribers")
app.add_typer(send.app, name="send")
app.command("tick")(tick.tick)
app.add_typer(taxonomy.app, name="taxonomy")
app.command("preview")(preview.preview)
app.command("explain")(explain.explain)
app.command("deliveries")(deliveries.deliveries)
app.command("web")(web.web)
app.command("hash-password")(web.hash_password_command)
app.command("demo")(demo.demo)
app.add_typer(bounces.app, name="bounces")
app.add_typer(domains.app, name="domains")
app.add_typer(runs.app, name="runs")
app.command("prune")(prune.prune)


def main() -> None:
    try:
        _configure_logging()
        app()
    except DigestError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except PydanticValidationError as exc:  # the settings did not load
        err.print(f"error: {describe_invalid(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        outage = _outage(exc)
        if outage is None:
            raise
        err.print(f"digest: {outage}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


def _outage(exc: Exception) -> DigestError | None:
    """A database or broker that did not answer, as one line (``cli.outages``)."""
    from digest.cli.outages import broker_unreachable, database_unreachable
    from digest.settings import get_settings

    try:
        settings = get_settings()
    except PydanticValidationError:
        return None
    return (database_unreachable(exc, settings.database_url)
            or broker_unreachable(exc, settings.broker_url))


def _configure_logging() -> None:
    """Logs on stderr in DIGEST_LOG_FORMAT (digest.logs); settings that do not load leave the
    error to the command that needs them, and the logs in the automatic format."""
    from digest.logs import configure_logging
    from digest.settings import get_settings

    try:
        settings = get_settings()
    except PydanticValidationError:
        configure_logging()
        return
    # A command's own output is its report: library chatter (alembic, a batch's summary) only
    # when DIGEST_LOG_LEVEL asks for it; warnings and errors always.
    level = settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
    configure_logging(settings.log_format, level)
