"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url

from digest import db
from digest.models import Base
from tests.conftest import PG_ADMIN_URL


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


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    """A database with no tables yet, for migrating step by step."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'steps.db'}"
        yield url
        db.engine_for(url).dispose()
        return
    name = f"digest_m_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    db.engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_0004_removes_the_ledger_copies_from_delivery_items_and_gives_them_back(empty_url):
    from alembic import command

    from digest.models import Delivery, DigestRun, SentItem, delivery_items
    from digest.selection import delivery_contents
    from tests.factories import T0, make_item, make_subscriber

    db.upgrade(empty_url, "0003")
    with db._sessionmaker(empty_url)() as session:
        first, second = make_item(session, "one"), make_item(session, "two")
        sub = make_subscriber(session, "ann@example.org")
        weekly = DigestRun(kind="weekly", slot_key="weekly:x", cutoff=T0, status="done")
        adhoc = DigestRun(kind="adhoc", slot_key="adhoc:x", cutoff=T0, status="done")
        session.add_all([weekly, adhoc])
        session.flush()
        scheduled = Delivery(run_id=weekly.id, subscriber_id=sub.id, email=sub.email)
        chosen = Delivery(run_id=adhoc.id, subscriber_id=sub.id, email=sub.email)
        session.add_all([scheduled, chosen])
        session.flush()
        # As planning wrote them before 0004: the ledger, and a copy of it in delivery_items.
        session.add_all([SentItem(subscriber_id=sub.id, item_id=i.id, delivery_id=scheduled.id)
                         for i in (first, second)])
        session.execute(delivery_items.insert(), [
            {"delivery_id": scheduled.id, "item_id": first.id},
            {"delivery_id": scheduled.id, "item_id": second.id},
            {"delivery_id": chosen.id, "item_id": first.id}])
        session.commit()
        ids = (scheduled.id, chosen.id, first.id, second.id)

    def rows(query):
        with db._sessionmaker(empty_url)() as session:
            return sorted(session.execute(query).all())

    scheduled_id, chosen_id, first_id, second_id = ids
    db.upgrade(empty_url)
    assert rows(select(delivery_items)) == [(chosen_id, first_id)]
    contents = delivery_contents()
    assert rows(select(contents.c.delivery_id, contents.c.item_id)) == sorted(
        [(scheduled_id, first_id), (scheduled_id, second_id), (chosen_id, first_id)])

    command.downgrade(db.alembic_config(empty_url), "0003")
    assert rows(select(delivery_items)) == sorted(
        [(scheduled_id, first_id), (scheduled_id, second_id), (chosen_id, first_id)])
