"""Engine and session factory, one per database URL, the dialect-aware statements every
module shares (a rowcount, an INSERT that ignores a conflict), and schema upgrades via Alembic."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Delete, Update

from digest.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


@lru_cache(maxsize=16)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session on the database at ``url`` (``settings.database_url``) whose transaction
    commits on success and rolls back on any error."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rowcount(session: Session, stmt: Update | Delete) -> int:
    """Run an UPDATE or DELETE; how many rows it matched (its result is a cursor's, which
    SQLAlchemy's types do not say)."""
    return cast(CursorResult[Any], session.execute(stmt)).rowcount or 0


def insert_ignoring_conflict(session: Session, model: Any, values: dict[str, Any],
                             conflict: list[str]) -> Any:
    """An INSERT of one row that does nothing if ``conflict`` (a unique key) is taken.

    A look-up followed by an INSERT races: both requests find nothing, both insert, and the
    unique constraint refuses the second one. This is the dialect's ``INSERT ... ON CONFLICT
    DO NOTHING`` (PostgreSQL and SQLite both have it): the loser of the race inserts nothing
    instead of failing, and reads the winner's row afterwards.
    """
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


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def wait_until_reachable(url: str, seconds: float,
                         on_wait: Callable[[str], None] | None = None,
                         sleep: Callable[[float], None] = time.sleep,
                         clock: Callable[[], float] = time.monotonic) -> None:
    """Return once the database at ``url`` accepts a connection, trying for ``seconds``
    (PostgreSQL out of connection slots, starting up or restarting: an outage of a minute
    should not need an operator to rerun a command). ``on_wait`` is told the server's refusal
    once before the first wait and then every ten seconds; after ``seconds`` the last error is
    raised as it was."""
    from sqlalchemy.exc import OperationalError

    engine = engine_for(url)
    deadline = clock() + seconds
    delay, told_at = 0.5, None
    while True:
        try:
            with engine.connect():
                return
        except OperationalError as exc:
            now = clock()
            if now + delay > deadline:
                raise
            if on_wait is not None and (told_at is None or now - told_at >= 10):
                on_wait(str(exc.orig or exc).strip().splitlines()[0])
                told_at = now
            sleep(delay)
            delay = min(delay * 2, 5.0)


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    engine_for(url)  # creates the SQLite folder
    command.upgrade(alembic_config(url), revision)
