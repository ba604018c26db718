"""Inserts that two requests may make at the same moment.

A look-up followed by an INSERT races: both requests find nothing, both insert, and the
unique constraint refuses the second one. ``insert_ignoring_conflict`` is the dialect's
``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite both have it): the loser of the
race inserts nothing instead of failing, and reads the winner's row afterwards.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from digest.errors import ConfigError


def insert_ignoring_conflict(session: Session, model: Any, values: dict[str, Any],
                             conflict: list[str]) -> Any:
    """An INSERT of one row that does nothing if ``conflict`` (a unique key) is taken."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model).values(**values).on_conflict_do_nothing(
            index_elements=conflict)
    raise ConfigError(
        f"database {dialect!r} is not supported; use PostgreSQL or SQLite in "
        "DIGEST_DATABASE_URL"
    )
