"""What a CSV import may change (docs/delivery-promise.md, rules I1, I2, R3): only the fields
its rows carry, filters when it has filter columns, never a reader who left back to receiving
mail. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from digest.models import Delivery, DeliveryStatus, Subscriber, Suppression, SuppressionReason
from digest.selection import plan_scheduled_run
from digest.subscribers import (
    FilterSpec,
    erase_subscriber,
    export_csv,
    find_subscriber,
    import_csv,
    suppress,
    unsubscribe,
    upsert_subscriber,
)
from tests.factories import T0, Taxo, make_item

HEADER = "email,frequency,timezone,weekday,hour,themes,locations,content_types,status\n"


@pytest.fixture
def taxo(session):
    t = Taxo(session)
    session.commit()
    return t


def reader(session, email: str) -> Subscriber:
    session.expire_all()
    return find_subscriber(session, email)


def filters_of(sub: Subscriber) -> list[tuple[list[str], list[str], list[str]]]:
    return [([t.name for t in f.themes], [loc.name for loc in f.locations],
             [c.name for c in f.content_types]) for f in sub.filters]


def add(session, email: str, **fields) -> Subscriber:
    sub, _ = upsert_subscriber(session, email, smtputf8=False, **fields)
    session.commit()
    return sub


def test_an_import_never_resubscribes_a_reader_who_unsubscribed_and_reports_the_line_skipped(
        session, taxo):
    sub = add(session, "left@example.org", filters=[FilterSpec(["Policing"])])
    unsubscribe(session, sub)
    session.commit()
    text = HEADER + ("new@example.org,weekly,UTC,0,8,,,,active\n"
                     "left@example.org,daily,UTC,0,8,Elections,,,active\n")
    report = import_csv(session, text, smtputf8=False)
    session.commit()
    assert (report.added, report.updated, report.errors) == (1, 0, [])
    [(line, reason)] = report.skipped
    assert line == 3 and "left@example.org unsubscribed on" in reason
    assert "never re-subscribes" in reason and "--status active" in reason
    left = reader(session, "left@example.org")
    # Left as they were: not re-subscribed, not even their other fields changed.
    assert (left.status, left.frequency, filters_of(left)) == (
        "unsubscribed", "weekly", [(["Policing"], [], [])])
    assert report.summary() == "1 added, 0 updated, 1 skipped, 0 rejected"


def test_an_import_never_resubscribes_a_suppressed_reader_or_an_erased_suppressed_address(
        session, taxo):
    add(session, "bounced@example.org")
    suppress(session, "bounced@example.org", SuppressionReason.hard_bounce, "550 5.1.1")
    erased = add(session, "erased@example.org")
    suppress(session, "erased@example.org", SuppressionReason.admin, "asked to be forgotten")
    erase_subscriber(session, erased)
    session.commit()
    # The erased address has no status cell: as a new address it would default to active.
    text = ("email,frequency,status\nbounced@example.org,daily,active\n"
            "erased@example.org,daily,\n")
    report = import_csv(session, text, smtputf8=False)
    session.commit()
    assert (report.added, report.updated) == (0, 0)
    reasons = dict(report.skipped)
    assert "bounced@example.org is on the suppression list (hard_bounce: 550 5.1.1)" in reasons[2]
    assert "erased@example.org is on the suppression list (admin" in reasons[3]
    bounced = reader(session, "bounced@example.org")
    assert (bounced.status, bounced.frequency) == ("suppressed", "weekly")
    assert session.scalars(select(Subscriber.email)).all() == ["bounced@example.org"]


def test_an_import_changes_only_the_fields_its_rows_carry_and_defaults_only_new_addresses(
        session, taxo):
    add(session, "ann@example.org", frequency="daily", timezone="Europe/Vienna", weekday=3,
        hour=6, filters=[FilterSpec(["Policing"], ["OSCE Mission to Serbia"])])
    # An empty cell (frequency, timezone, weekday) and a missing column (hour, status, filters).
    text = "email,frequency,timezone,weekday\nann@example.org,,,friday\nnew@example.org,,,\n"
    report = import_csv(session, text, smtputf8=False)
    session.commit()
    assert (report.added, report.updated, report.errors, report.skipped) == (1, 1, [], [])
    ann = reader(session, "ann@example.org")
    assert (ann.frequency, ann.timezone, ann.weekday, ann.hour, ann.status) == (
        "daily", "Europe/Vienna", 4, 6, "active")
    assert filters_of(ann) == [(["Policing"], ["OSCE Mission to Serbia"], [])]
    new = reader(session, "new@example.org")
    assert (new.frequency, new.timezone, new.weekday, new.hour, new.status, new.filters) == (
        "weekly", "UTC", 0, 8, "active", [])


def test_filter_columns_replace_the_readers_filters_with_the_rows_given_for_the_address(
        session, taxo):
    add(session, "ann@example.org", filters=[FilterSpec(["Policing"]), FilterSpec(["Elections"])])
    add(session, "bob@example.org", filters=[FilterSpec(["Policing"])])
    text = ("email,themes,locations\n"
            "ann@example.org,Gender equality,\n"
            "ann@example.org,,South-Eastern Europe\n"
            "bob@example.org,,\n")  # every filter cell empty: no filter, everything
    import_csv(session, text, smtputf8=False)
    session.commit()
    assert filters_of(reader(session, "ann@example.org")) == [
        (["Gender equality"], [], []), ([], ["South-Eastern Europe"], [])]
    assert filters_of(reader(session, "bob@example.org")) == []


def test_an_import_records_that_readers_left_and_a_suppressed_one_is_listed(
        session, settings, taxo):
    make_item(session, "policing", themes=[taxo.policing])
    add(session, "ann@example.org")
    add(session, "bob@example.org")
    plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    text = HEADER + ("ann@example.org,,,,,,,,unsubscribed\n"
                     "bob@example.org,,,,,,,,suppressed\n"
                     "cy@example.org,,,,,,,,suppressed\n")
    report = import_csv(session, text, smtputf8=False)
    session.commit()
    assert (report.added, report.updated, report.skipped) == (1, 2, [])
    assert [reader(session, e).status for e in ("ann@example.org", "bob@example.org",
                                                "cy@example.org")] == [
        "unsubscribed", "suppressed", "suppressed"]
    # Rule R3: a suppressed status has its suppression row, whoever wrote it.
    listed = session.execute(select(Suppression.email, Suppression.reason, Suppression.detail)
                             .order_by(Suppression.email)).all()
    assert [(e, r) for e, r, _ in listed] == [("bob@example.org", "admin"),
                                              ("cy@example.org", "admin")]
    assert all("CSV import" in detail for _, _, detail in listed)
    # Rule R4: what was planned for them is cancelled.
    assert set(session.scalars(select(Delivery.status))) == {DeliveryStatus.cancelled}


def test_a_reader_suppressed_by_an_import_stays_suppressed_after_erasure_and_re_import(
        session, taxo):
    import_csv(session, HEADER + "gone@example.org,,,,,,,,suppressed\n", smtputf8=False)
    session.commit()
    erase_subscriber(session, reader(session, "gone@example.org"))
    session.commit()
    again = import_csv(session, HEADER + "gone@example.org,weekly,UTC,0,8,,,,active\n",
                       smtputf8=False)
    session.commit()
    assert again.added == 0 and "on the suppression list" in again.skipped[0][1]
    assert session.scalars(select(Subscriber)).all() == []


def test_an_export_imports_back_unchanged_and_importing_it_twice_changes_nothing(
        session, taxo):
    add(session, "ann@example.org", frequency="daily", timezone="Asia/Kathmandu", weekday=2,
        hour=23, filters=[FilterSpec(["Policing"], ["OSCE Mission to Serbia"], ["News"]),
                          FilterSpec([], ["South-Eastern Europe"])])
    add(session, "bob@example.org")
    unsubscribe(session, add(session, "cy@example.org", filters=[FilterSpec(["Elections"])]))
    add(session, "di@example.org")
    suppress(session, "di@example.org", SuppressionReason.hard_bounce, "550 5.1.1")
    session.commit()
    before = export_csv(session)
    for _ in range(2):
        report = import_csv(session, before, smtputf8=False)
        session.commit()
        assert (report.added, report.errors, report.skipped) == (0, [], [])
        assert export_csv(session) == before


def test_an_export_imported_into_an_empty_database_gives_the_same_readers(session, taxo,
                                                                          tmp_path):
    add(session, "ann@example.org", filters=[FilterSpec(["Policing"])])
    add(session, "di@example.org")
    suppress(session, "di@example.org", SuppressionReason.hard_bounce, "550 5.1.1")
    session.commit()
    exported = export_csv(session)
    erase_subscriber(session, reader(session, "ann@example.org"))
    session.execute(Suppression.__table__.delete())
    erase_subscriber(session, reader(session, "di@example.org"))
    session.commit()
    report = import_csv(session, exported, smtputf8=False)
    session.commit()
    assert report.added == 2 and export_csv(session) == exported
    # The suppressed reader came back suppressed, so listed again.
    assert session.scalars(select(Suppression.email)).all() == ["di@example.org"]
    assert reader(session, "di@example.org").unsubscribed_at is not None
    assert reader(session, "ann@example.org").created_at > T0 - timedelta(days=1)
