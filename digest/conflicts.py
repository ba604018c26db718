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
                             conflict: list[str]):
    """An INSERT of one row that does nothing if ``conflict`` (a unique key) is taken."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ConfigError(
            f"database {dialect!r} is not supported; use PostgreSQL or SQLite in DIGEST_DATABASE_URL"
        )
    return insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
