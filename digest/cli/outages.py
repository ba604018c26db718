"""An unreachable database or broker, told in one line: which server, what it said, what to
check. The CLI's ``main`` turns these exceptions into a ``ServiceUnavailableError``."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from digest.errors import ServiceUnavailableError


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _where(url: str | None, default_port: int) -> str:
    if not url:
        return "(not configured)"
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001  (a URL we cannot read: say so, no traceback)
        return "(an unreadable URL)"
    if parsed.drivername.startswith("sqlite"):
        return parsed.database or ":memory:"
    return f"{parsed.host or 'localhost'}:{parsed.port or default_port}"


def database_unreachable(exc: BaseException, url: str | None) -> ServiceUnavailableError | None:
    """The one-line error for a database that did not answer, or None for any other error."""
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError)
                                             and exc.connection_invalidated):
        server = "SQLite" if url and url.startswith("sqlite") else "PostgreSQL"
        return ServiceUnavailableError(
            f"the database at {_where(url, 5432)} is unreachable ({first_line(exc)}); "
            f"is {server} running?")
    return None


def broker_unreachable(exc: BaseException, url: str | None) -> ServiceUnavailableError | None:
    """The one-line error for a Redis broker that did not answer or refused a write."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import RedisError

    if isinstance(exc, KombuOperationalError | RedisError):
        return ServiceUnavailableError(
            f"the broker at {_where(url, 6379)} is unreachable or refused the task "
            f"({first_line(exc)}); is Redis running, with memory to spare? The database "
            "is the record: the sweep sends what was planned once the broker is back.")
    return None
