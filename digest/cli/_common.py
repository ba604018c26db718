"""What every command group shares: the consoles, dates, the session and the queue."""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime, time

from rich.console import Console
from sqlalchemy.orm import Session

from digest import db
from digest.errors import ValidationError
from digest.settings import get_settings

__all__ = ["console", "ensure_db", "err", "new_session", "parse_when", "session_scope",
           "task_queue"]

# Piped or redirected output has no terminal width to fit: Rich would assume 80 columns and
# cut the tables' columns to a few letters, so a log file or a grep would lose the figures.
# COLUMNS, when set, still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
console = Console(width=_WIDTH)
err = Console(stderr=True)


def parse_when(value: str | None, *, end_of_day: bool = False) -> datetime | None:
    """ISO date or datetime; a date means its start (or end) in UTC."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).date()
            return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(
            f"bad date {value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[+00:00]") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def task_queue():
    """Where the CLI's work goes: the broker when one is configured, else this process."""
    from digest.delivery.periodic import queue_for

    return queue_for(get_settings())


def new_session() -> Session:
    return db._sessionmaker(get_settings().database_url)()


def session_scope() -> AbstractContextManager[Session]:
    """A session on the configured database that commits on success (``db.session_scope``)."""
    return db.session_scope(get_settings().database_url)


def ensure_db() -> None:
    settings = get_settings()
    if not settings.database_url.startswith("sqlite"):
        db.wait_until_reachable(settings.database_url, settings.db_wait_seconds, _waiting)
    db.upgrade(settings.database_url)


def _waiting(refusal: str) -> None:
    err.print(f"waiting for the database ({refusal}); up to DIGEST_DB_WAIT_SECONDS, "
                      "Ctrl-C to stop", markup=False, highlight=False, soft_wrap=True)
