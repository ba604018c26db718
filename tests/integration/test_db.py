"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import column, create_engine, func, insert, inspect, select, table, text
from sqlalchemy.engine import make_url

from digest import db
from digest.models import Base
from tests.conftest import PG_ADMIN_URL

# The tables revision 0013 folded into the deliveries (ADR 0030), as the older revisions had them.
SENT_ITEMS = table("sent_items", column("subscriber_id"), column("item_id"),
                   column("delivery_id"), column("created_at"))
DELIVERY_ITEMS = table("delivery_items", column("delivery_id"), column("item_id"))


_ITEMS_BEFORE_0015 = table("items", column("id"), column("guid"), column("url"), column("title"),
                           column("summary"), column("published_at"), column("ingested_at"),
                           column("updated_at"), column("source"), column("is_backfill"))


def _old_item(session, title: str):
    """An item as the columns before 0015 hold it (the model has grown since)."""
    from types import SimpleNamespace

    from tests.factories import T0

    item_id = session.execute(insert(_ITEMS_BEFORE_0015).values(
        guid=f"old-{title}", url=f"https://newsroom.example.org/{title}", title=title,
        summary="", published_at=T0, ingested_at=T0, updated_at=T0, source="test",
        is_backfill=False).returning(_ITEMS_BEFORE_0015.c.id)).scalar_one()
    return SimpleNamespace(id=item_id, ingested_at=T0)


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

    from tests.factories import T0

    delivery_items = DELIVERY_ITEMS
    db.upgrade(empty_url, "0003")
    with db._sessionmaker(empty_url)() as session:
        first, second = _old_item(session, "one"), _old_item(session, "two")
        sub = _old_subscriber(session, "ann@example.org")
        scheduled = _old_delivery(session, _old_run(session, "weekly", T0), sub)
        chosen = _old_delivery(session, _old_run(session, "adhoc", T0), sub)
        # As planning wrote them before 0004: the ledger, and a copy of it in delivery_items.
        session.execute(insert(SENT_ITEMS), [
            {"subscriber_id": sub.id, "item_id": i.id, "delivery_id": scheduled,
             "created_at": T0} for i in (first, second)])
        session.execute(delivery_items.insert(), [
            {"delivery_id": scheduled, "item_id": first.id},
            {"delivery_id": scheduled, "item_id": second.id},
            {"delivery_id": chosen, "item_id": first.id}])
        session.commit()
        ids = (scheduled, chosen, first.id, second.id)

    def rows(query):
        with db._sessionmaker(empty_url)() as session:
            return sorted(session.execute(query).all())

    scheduled_id, chosen_id, first_id, second_id = ids
    db.upgrade(empty_url, "0004")
    assert rows(select(delivery_items)) == [(chosen_id, first_id)]
    contents = select(DELIVERY_ITEMS.c.delivery_id, DELIVERY_ITEMS.c.item_id).union(
        select(SENT_ITEMS.c.delivery_id, SENT_ITEMS.c.item_id)).subquery()
    assert rows(select(contents.c.delivery_id, contents.c.item_id)) == sorted(
        [(scheduled_id, first_id), (scheduled_id, second_id), (chosen_id, first_id)])

    command.downgrade(db.alembic_config(empty_url), "0003")
    assert rows(select(delivery_items)) == sorted(
        [(scheduled_id, first_id), (scheduled_id, second_id), (chosen_id, first_id)])


def _old_run(session, kind, cutoff):
    """A digest_runs row with the columns every revision has (see ``_old_delivery``)."""
    from digest.models import DigestRun

    return session.execute(insert(DigestRun).values(
        kind=kind, slot_key=f"{kind}:x", cutoff=cutoff, status="done", params={}, dry_run=False,
        planned_count=0, skipped_count=0, created_at=cutoff).returning(DigestRun.id)
    ).scalar_one()


def _old_subscriber(session, email, status="active"):
    """A subscribers row with the columns every revision has (see ``_old_delivery``)."""
    from types import SimpleNamespace

    from digest.models import Subscriber
    from tests.factories import T0

    row_id = session.execute(insert(Subscriber).values(
        email=email, status=status, frequency="weekly", timezone="UTC", weekday=0, hour=7,
        group_by="theme", soft_bounces=0, created_at=T0).returning(Subscriber.id)).scalar_one()
    return SimpleNamespace(id=row_id, email=email)


def _old_delivery(session, run_id, sub, **values):
    """A deliveries row written with the columns of an older schema only: the models have
    columns a revision before theirs does not (an ORM object would write them all)."""
    values = {"run_id": run_id, "subscriber_id": sub.id, "email": sub.email, "status": "sent",
              "attempts": 0, "item_count": 0, **values}
    from tests.factories import T0

    values.setdefault("created_at", T0)
    values.setdefault("updated_at", T0)
    from digest.models import Delivery

    typed = Delivery.__table__.c
    deliveries = table("deliveries", column("id"),
                       *(column(name, typed[name].type) for name in values))
    return session.execute(insert(deliveries).values(**values).returning(deliveries.c.id)
                           ).scalar_one()


# What the code before 0005 wrote to smtp_reply, and where 0005 puts each part.
_MIXED_REPLIES = [
    ("gave up after 3 attempts: SMTP server mx.example.org:25 refused ann@example.org at "
     "RCPT TO: 451 4.7.1 Greylisted, try again",
     "451 4.7.1 Greylisted, try again", "own"),
    ("SMTP server mx.example.org:25 refused bob@example.org at RCPT TO: 550 5.1.1 no such user",
     "550 5.1.1 no such user", "own"),
    ("cancelled: subscriber left or was suppressed", None, "own"),
    ("not sent, put back: SMTP server mx.example.org:25 refused cy@example.org at MAIL FROM: "
     "553 5.1.8 bad sender domain (refused our sender address: check the envelope sender's "
     "domain)", None, "own"),
    ("connection to SMTP server mx.example.org:25 lost at DATA for di@example.org: timed out; "
     "the message was not accepted, try again later", None, "own"),
    ("skipped: no new items matched", None, "own"),
    ("2.0.0 Ok: queued as 4F2A | bounced after it was accepted: 5.1.1 user unknown",
     "2.0.0 Ok: queued as 4F2A", "bounced after it was accepted: 5.1.1 user unknown"),
    ("2.0.0 Ok: queued as 9C1B", "2.0.0 Ok: queued as 9C1B", None),
    (None, None, None),
]


def test_0005_moves_our_notes_out_of_smtp_reply_and_puts_them_back(empty_url):
    from alembic import command

    from digest.models import Delivery
    from tests.factories import T0

    delivery_items = DELIVERY_ITEMS
    db.upgrade(empty_url, "0004")
    with db._sessionmaker(empty_url)() as session:
        item = _old_item(session, "one")
        run_id = _old_run(session, "weekly", T0)
        ids = [_old_delivery(session, run_id, _old_subscriber(session, f"r{n}@example.org"),
                             smtp_reply=old)
               for n, (old, _, _) in enumerate(_MIXED_REPLIES)]
        session.execute(delivery_items.insert(), [{"delivery_id": ids[0], "item_id": item.id}])
        session.commit()

    def columns(*names):
        table = Delivery.__table__
        with db.engine_for(empty_url).connect() as conn:
            return [tuple(row) for row in conn.execute(
                select(*(table.c[n] for n in names)).order_by(table.c.id))]

    db.upgrade(empty_url)
    expected = [(reply, old if note == "own" else note) for old, reply, note in _MIXED_REPLIES]
    assert columns("smtp_reply", "note") == expected

    command.downgrade(db.alembic_config(empty_url), "0004")
    assert "note" not in {c["name"] for c in inspect(db.engine_for(empty_url)).get_columns(
        "deliveries")}
    assert columns("smtp_reply") == [(old,) for old, _, _ in _MIXED_REPLIES]
    # The column went without copying the table: nothing cascaded from deliveries.
    with db.engine_for(empty_url).connect() as conn:
        assert conn.execute(select(delivery_items)).all() == [(ids[0], item.id)]


def test_0006_keeps_the_ledger_rows_and_checks_only_their_delivery_then_puts_the_checks_back(
        empty_url):
    from alembic import command

    from digest.models import DigestRun
    from tests.factories import T0

    db.upgrade(empty_url, "0005")
    with db._sessionmaker(empty_url)() as session:
        item = _old_item(session, "one")
        sub = _old_subscriber(session, "ann@example.org")
        delivery = _old_delivery(session, _old_run(session, "weekly", T0), sub)
        session.execute(insert(SENT_ITEMS).values(subscriber_id=sub.id, item_id=item.id,
                                                  delivery_id=delivery, created_at=T0))
        session.commit()
        row = (sub.id, item.id, delivery)

    def ledger():
        with db.engine_for(empty_url).connect() as conn:
            return conn.execute(select(SENT_ITEMS.c.subscriber_id, SENT_ITEMS.c.item_id,
                                       SENT_ITEMS.c.delivery_id)).all()

    def checked_tables():
        return sorted(fk["referred_table"]
                      for fk in inspect(db.engine_for(empty_url)).get_foreign_keys("sent_items"))

    assert checked_tables() == ["deliveries", "items", "subscribers"]
    db.upgrade(empty_url, "0006")
    assert checked_tables() == ["deliveries"]
    assert ledger() == [row]  # the SQLite copy of sent_items cascaded nothing
    assert "planned_through" in {c["name"] for c in inspect(db.engine_for(empty_url))
                                 .get_columns("digest_runs")}

    command.downgrade(db.alembic_config(empty_url), "0005")
    assert checked_tables() == ["deliveries", "items", "subscribers"]
    assert ledger() == [row]
    assert "planned_through" not in {c["name"] for c in inspect(db.engine_for(empty_url))
                                     .get_columns("digest_runs")}
    with db.engine_for(empty_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(DigestRun)).scalar() == 1


def test_0007_adds_the_pruned_tallies_and_takes_them_away(empty_url):
    from alembic import command

    from tests.factories import T0

    db.upgrade(empty_url, "0006")
    with db._sessionmaker(empty_url)() as session:
        _old_delivery(session, _old_run(session, "weekly", T0),
                      _old_subscriber(session, "ann@example.org"))
        session.commit()

    def tables():
        return set(inspect(db.engine_for(empty_url)).get_table_names())

    assert "pruned_tallies" not in tables()
    db.upgrade(empty_url)
    assert "pruned_tallies" in tables()
    with db.engine_for(empty_url).begin() as conn:
        conn.execute(text("INSERT INTO pruned_tallies (metric, kind, label, count, updated_at) "
                          "VALUES ('messages_sent', 'weekly', '', 5000000000, :now)"),
                     {"now": T0})
        assert conn.execute(text("SELECT count FROM pruned_tallies")).scalar() == 5_000_000_000

    command.downgrade(db.alembic_config(empty_url), "0006")
    assert "pruned_tallies" not in tables()
    with db.engine_for(empty_url).connect() as conn:  # nothing else went with it
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar() == 1


def test_0008_lists_every_suppressed_reader_the_list_lacked_and_takes_only_those_back(empty_url):
    from alembic import command

    from digest.models import Suppression, SuppressionReason

    db.upgrade(empty_url, "0007")
    with db._sessionmaker(empty_url)() as session:
        _old_subscriber(session, "unlisted@example.org", "suppressed")
        _old_subscriber(session, "listed@example.org", "suppressed")
        _old_subscriber(session, "active@example.org")
        session.add(Suppression(email="listed@example.org", reason=SuppressionReason.hard_bounce,
                                detail="550 5.1.1"))
        session.add(Suppression(email="erased@example.org", reason=SuppressionReason.admin,
                                detail="asked to be forgotten"))
        session.commit()

    def listed():
        with db.engine_for(empty_url).connect() as conn:
            return sorted(conn.execute(select(Suppression.email, Suppression.reason)).all())

    db.upgrade(empty_url)
    assert listed() == [("erased@example.org", "admin"), ("listed@example.org", "hard_bounce"),
                        ("unlisted@example.org", "admin")]
    command.downgrade(db.alembic_config(empty_url), "0007")
    assert listed() == [("erased@example.org", "admin"), ("listed@example.org", "hard_bounce")]


def test_0009_keeps_what_lifting_a_suppression_gives_back_and_goes_back_down(empty_url):
    from alembic import command

    db.upgrade(empty_url, "0008")
    with db._sessionmaker(empty_url)() as session:
        _old_subscriber(session, "ann@example.org", "suppressed")
        session.commit()
    db.upgrade(empty_url)
    with db.engine_for(empty_url).connect() as conn:
        assert conn.execute(text("SELECT status, status_before_suppression FROM subscribers")
                            ).all() == [("suppressed", None)]
    command.downgrade(db.alembic_config(empty_url), "0008")
    with db.engine_for(empty_url).connect() as conn:
        assert conn.execute(text("SELECT email, status FROM subscribers")).all() == [
            ("ann@example.org", "suppressed")]


def test_0013_folds_the_ledger_into_the_deliveries_and_rebuilds_it_going_down(empty_url):
    """Each delivery gets the items the ledger or delivery_items listed for it, claims when the
    ledger held a row of it, and the newest item's ingested_at; down again, each pair goes
    back where it was."""
    from alembic import command

    from digest.models import Delivery, DigestRun
    from tests.factories import T0

    db.upgrade(empty_url, "0011")
    with db._sessionmaker(empty_url)() as session:
        first, second, third = (_old_item(session, name) for name in ("one", "two", "three"))
        sub = _old_subscriber(session, "ann@example.org")

        def run(kind: str, key: str) -> int:
            return session.execute(insert(DigestRun).values(
                kind=kind, slot_key=key, cutoff=T0, status="done", params={}, dry_run=False,
                planned_count=0, skipped_count=0, created_at=T0).returning(DigestRun.id)
            ).scalar_one()

        weekly = _old_delivery(session, run("weekly", "weekly:1"), sub, item_count=2)
        adhoc = _old_delivery(session, run("adhoc", "adhoc:1"), sub, item_count=2)
        dry = _old_delivery(session, run("weekly", "dry-run:1"), sub, status="dry_run",
                            item_count=1)
        cancelled = _old_delivery(session, run("weekly", "weekly:2"), sub, status="cancelled")
        skipped = _old_delivery(session, run("weekly", "weekly:3"), sub, status="skipped")
        session.execute(insert(SENT_ITEMS), [
            {"subscriber_id": sub.id, "item_id": first.id, "delivery_id": weekly,
             "created_at": T0},
            {"subscriber_id": sub.id, "item_id": second.id, "delivery_id": weekly,
             "created_at": T0},
            {"subscriber_id": sub.id, "item_id": third.id, "delivery_id": adhoc,
             "created_at": T0}])
        session.execute(insert(DELIVERY_ITEMS), [
            {"delivery_id": adhoc, "item_id": first.id},  # a repeat the operator chose
            {"delivery_id": dry, "item_id": third.id}])
        session.commit()
        newest = max(first.ingested_at, second.ingested_at)
        ids = {"first": first.id, "second": second.id, "third": third.id}
        third_at = third.ingested_at

    def ledger_tables():
        with db.engine_for(empty_url).connect() as conn:
            return (sorted(conn.execute(select(SENT_ITEMS.c.subscriber_id, SENT_ITEMS.c.item_id,
                                               SENT_ITEMS.c.delivery_id)).all()),
                    sorted(conn.execute(select(DELIVERY_ITEMS)).all()))

    before = ledger_tables()
    db.upgrade(empty_url)
    assert not {"sent_items", "delivery_items"} & set(
        inspect(db.engine_for(empty_url)).get_table_names())
    with db._sessionmaker(empty_url)() as session:
        rows = {d.id: d for d in session.scalars(select(Delivery))}
        assert rows[weekly].item_ids == sorted([ids["first"], ids["second"]])
        assert rows[weekly].claims and rows[weekly].newest_item_at == newest
        assert rows[adhoc].item_ids == sorted([ids["first"], ids["third"]])
        assert rows[adhoc].claims
        assert rows[dry].item_ids == [ids["third"]] and not rows[dry].claims
        assert rows[dry].newest_item_at == third_at
        for empty in (cancelled, skipped):
            assert rows[empty].item_ids == [] and not rows[empty].claims
            assert rows[empty].newest_item_at is None

    command.downgrade(db.alembic_config(empty_url), "0011")
    assert ledger_tables() == before


def test_0012_counts_the_deliveries_there_are_and_goes_down_and_up_again(empty_url):
    """Upgrading to 0012 counts the rows already there; the triggers count what follows;
    down to 0011 and up again leaves the same counts (both databases)."""
    from alembic import command

    from digest.delivery.counts import runs_counts
    from digest.models import Delivery
    from tests.factories import T0

    db.upgrade(empty_url, "0011")
    with db._sessionmaker(empty_url)() as session:
        run = _old_run(session, "weekly", T0)
        for n, status in enumerate(("sent", "sent", "failed", "pending")):
            _old_delivery(session, run, _old_subscriber(session, f"r{n}@example.org"),
                          status=status, item_count=1, attempts=0, created_at=T0,
                          updated_at=T0, note="message too large: 552" if n == 2 else None)
        session.commit()
    db.upgrade(empty_url)
    expected = {run: {"sent": 2, "failed": 1, "pending": 1}}
    with db._sessionmaker(empty_url)() as session:
        assert runs_counts(session, [run]) == expected
        session.execute(Delivery.__table__.update().where(Delivery.status == "pending")
                        .values(status="sent"))
        session.commit()
        assert runs_counts(session, [run]) == {run: {"sent": 3, "failed": 1}}
    command.downgrade(db.alembic_config(empty_url), "0011")
    names = inspect(db.engine_for(empty_url)).get_table_names()
    assert "delivery_counts" not in names
    with db.engine_for(empty_url).begin() as conn:  # no trigger left to write to it
        conn.execute(text("UPDATE deliveries SET status = 'failed' WHERE status = 'sent' "
                          "AND subscriber_id = (SELECT min(subscriber_id) FROM deliveries)"))
    db.upgrade(empty_url)
    with db._sessionmaker(empty_url)() as session:
        assert runs_counts(session, [run]) == {run: {"sent": 2, "failed": 2}}
        assert session.scalar(select(func.count()).select_from(Delivery)) == 4
    db.engine_for(empty_url).dispose()


def test_0014_lays_out_planning_chunks_and_going_down_keeps_a_half_planned_runs_progress(
        empty_url):
    """Going down, a run still planning gets back the progress the older planner resumes
    from: the end of its chunks planned without a gap from the first (ADR 0032)."""
    from alembic import command

    from tests.factories import T0

    db.upgrade(empty_url)
    chunks = table("planning_chunks", column("run_id"), column("seq"), column("after_id"),
                   column("through_id"), column("planned_at"))
    with db.engine_for(empty_url).begin() as conn:
        conn.execute(text("INSERT INTO digest_runs (id, kind, slot_key, cutoff, status, params, "
                          "dry_run, planned_count, skipped_count, created_at) VALUES "
                          "(1, 'weekly', 'weekly:a', :t, 'planning', '{}', false, 0, 0, :t), "
                          "(2, 'weekly', 'weekly:b', :t, 'planning', '{}', false, 0, 0, :t)"),
                     {"t": T0})
        # Run 1: chunks 0 and 1 planned, 2 not, 3 planned (by another planner): through 20.
        # Run 2: its first chunk not planned yet: no progress to give back.
        conn.execute(insert(chunks), [
            {"run_id": 1, "seq": 0, "after_id": None, "through_id": 10, "planned_at": T0},
            {"run_id": 1, "seq": 1, "after_id": 10, "through_id": 20, "planned_at": T0},
            {"run_id": 1, "seq": 2, "after_id": 20, "through_id": 30, "planned_at": None},
            {"run_id": 1, "seq": 3, "after_id": 30, "through_id": None, "planned_at": T0},
            {"run_id": 2, "seq": 0, "after_id": None, "through_id": 10, "planned_at": None},
            {"run_id": 2, "seq": 1, "after_id": 10, "through_id": None, "planned_at": T0},
        ])
    command.downgrade(db.alembic_config(empty_url), "0013")
    assert "planning_chunks" not in inspect(db.engine_for(empty_url)).get_table_names()
    with db.engine_for(empty_url).connect() as conn:
        progress = dict(conn.execute(text("SELECT id, planned_through FROM digest_runs")).all())
    assert progress == {1: 20, 2: None}
    db.upgrade(empty_url)
    assert "planning_chunks" in inspect(db.engine_for(empty_url)).get_table_names()
