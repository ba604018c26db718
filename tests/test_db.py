"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from digest import db
from digest.models import Base


def test_migrated_schema_matches_the_models(db_url):
    with db.engine_for(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrations_go_down_to_nothing_and_up_again(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    db.upgrade(url)
    command.downgrade(db.alembic_config(url), "base")
    assert inspect(db.engine_for(url)).get_table_names() == ["alembic_version"]
    db.upgrade(url)
    assert "deliveries" in inspect(db.engine_for(url)).get_table_names()
    db.engine_for(url).dispose()
