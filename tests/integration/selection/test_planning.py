"""Selection rules (ARCHITECTURE.md), proved on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from digest.models import Delivery, DigestRun, Subscriber, SuppressionReason
from digest.selection import (
    AdhocQuery,
    delivery_contents,
    plan_adhoc_run,
    plan_immediate_run,
    plan_scheduled_run,
    preview_items,
)
from tests.factories import T0, make_item, make_subscriber
from tests.ledger import claims


def carried(session, run_id: int) -> dict[str, set[str]]:
    """email -> titles carried by each delivery of the run."""
    contents = delivery_contents(session)
    rows = session.execute(
        select(Delivery.email, contents.c.item_id)
        .join(contents, contents.c.delivery_id == Delivery.id, isouter=True)
        .where(Delivery.run_id == run_id)
    ).all()
    from digest.models import Item

    titles = dict(session.execute(select(Item.id, Item.title)).all())
    out: dict[str, set[str]] = {}
    for email, item_id in rows:
        out.setdefault(email, set())
        if item_id is not None:
            out[email].add(titles[item_id])
    return out


def test_facets_or_within_and_across_empty_matches_anything(session, taxo, settings):
    t = taxo
    make_item(session, "policing news", themes=[t.policing], locations=[t.serbia], ctype=t.news)
    make_item(session, "gender news", themes=[t.gender], locations=[t.bishkek], ctype=t.news)
    make_item(session, "policing press", themes=[t.policing], ctype=t.press)
    make_item(session, "elections news", themes=[t.elections], ctype=t.news)
    make_subscriber(session, "a@example.org", {"themes": [t.policing, t.gender], "types": [t.news]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, run.run_id)["a@example.org"] == {"policing news", "gender news"}


def test_several_filters_are_a_union(session, taxo, settings):
    t = taxo
    make_item(session, "policing anywhere", themes=[t.policing], locations=[t.bishkek])
    make_item(session, "elections in montenegro", themes=[t.elections], locations=[t.montenegro])
    make_item(session, "elections in serbia", themes=[t.elections], locations=[t.serbia])
    make_subscriber(session, "u@example.org", {"themes": [t.policing]}, {"locations": [t.montenegro]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    assert carried(session, run.run_id)["u@example.org"] == {"policing anywhere", "elections in montenegro"}


def test_region_filter_matches_the_missions_under_it(session, taxo, settings):
    t = taxo
    make_item(session, "montenegro", locations=[t.montenegro])
    make_item(session, "serbia", locations=[t.serbia])
    make_item(session, "bishkek", locations=[t.bishkek])
    make_subscriber(session, "r@example.org", {"locations": [t.see]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    assert carried(session, run.run_id)["r@example.org"] == {"montenegro", "serbia"}


def test_subscriber_without_filters_gets_everything_fresh(session, taxo, settings):
    make_item(session, "one")
    make_item(session, "two", themes=[taxo.elections])
    make_subscriber(session, "all@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    assert carried(session, run.run_id)["all@example.org"] == {"one", "two"}


def test_late_item_with_old_publishing_date_is_sent_once(session, taxo, settings):
    sub = make_subscriber(session, "late@example.org", watermark=T0 - timedelta(days=7))
    session.commit()
    first = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, first.run_id)["late@example.org"] == set()
    # Published three weeks ago, but it only reaches us now: it belongs to the next window.
    make_item(session, "late arrival", ingested_at=T0 + timedelta(days=2),
              published_at=T0 - timedelta(days=21))
    session.commit()
    second = plan_scheduled_run(session, "weekly", now=T0 + timedelta(days=7), everyone=True, settings=settings)
    third = plan_scheduled_run(session, "weekly", now=T0 + timedelta(days=14), everyone=True, settings=settings)
    session.commit()
    assert carried(session, second.run_id)["late@example.org"] == {"late arrival"}
    assert carried(session, third.run_id)["late@example.org"] == set()
    assert session.get(Subscriber, sub.id).watermark == T0 + timedelta(days=14)


def test_same_item_never_sent_twice_even_if_the_watermark_is_lost(session, taxo, settings):
    make_item(session, "once", ingested_at=T0 - timedelta(hours=2))
    sub = make_subscriber(session, "once@example.org")
    session.commit()
    first = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    session.get(Subscriber, sub.id).watermark = None  # e.g. restored from an old backup
    session.commit()
    second = plan_scheduled_run(session, "weekly", now=T0 + timedelta(hours=1), everyone=True, settings=settings)
    session.commit()
    assert carried(session, first.run_id)["once@example.org"] == {"once"}
    assert carried(session, second.run_id)["once@example.org"] == set()
    assert len(claims(session)) == 1


def test_a_scheduled_dry_run_counts_but_leaves_the_claims_and_watermarks_for_the_real_run(
        session, taxo, settings):
    t = taxo
    make_item(session, "old news", themes=[t.policing])
    make_subscriber(session, "a@example.org", {"themes": [t.policing]})
    session.commit()
    first = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    make_item(session, "fresh news", themes=[t.policing], ingested_at=T0 + timedelta(days=3))
    session.commit()

    later = T0 + timedelta(days=7)
    dry = plan_scheduled_run(session, "weekly", now=later, everyone=True, dry_run=True, settings=settings)
    session.commit()
    # It says what the real run would carry: the new item only, the old one was sent.
    assert (dry.dry_run, dry.planned) == (True, 1)
    assert carried(session, dry.run_id) == {"a@example.org": {"fresh news"}}
    assert len(claims(session)) == 1
    assert session.scalars(select(Subscriber.watermark)).one() == T0

    real = plan_scheduled_run(session, "weekly", now=later, everyone=True, settings=settings)
    session.commit()
    assert real.planned == 1 and real.run_id not in (first.run_id, dry.run_id)
    assert carried(session, real.run_id) == {"a@example.org": {"fresh news"}}
    assert len(claims(session)) == 2


def test_archive_backfill_and_items_older_than_the_lookback_are_not_mailed(session, taxo, settings):
    make_item(session, "backfill", backfill=True)
    make_item(session, "too old for a first digest", ingested_at=T0 - timedelta(days=8))
    make_item(session, "fresh")
    make_subscriber(session, "new@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    assert carried(session, run.run_id)["new@example.org"] == {"fresh"}


def test_empty_digest_is_skipped_and_recorded(session, taxo, settings):
    make_item(session, "policing", themes=[taxo.policing])
    make_subscriber(session, "nothing@example.org", {"themes": [taxo.elections]})
    make_subscriber(session, "something@example.org", {"themes": [taxo.policing]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    statuses = dict(session.execute(select(Delivery.email, Delivery.status)
                                    .where(Delivery.run_id == run.run_id)).all())
    assert statuses == {"nothing@example.org": "skipped", "something@example.org": "pending"}
    assert (run.planned, run.skipped) == (1, 1)
    db_run = session.get(DigestRun, run.run_id)
    assert (db_run.planned_count, db_run.skipped_count) == (1, 1)


def test_a_second_tick_for_the_same_slot_plans_nothing(session, taxo, settings):
    make_item(session, "x")
    make_subscriber(session, "due@example.org", weekday=T0.weekday(), hour=T0.hour)
    session.commit()
    first = plan_scheduled_run(session, "weekly", now=T0, settings=settings)
    session.commit()
    again = plan_scheduled_run(session, "weekly", now=T0 + timedelta(minutes=25), settings=settings)
    session.commit()
    assert first.created and first.planned == 1
    assert not again.created and again.run_id == first.run_id
    assert session.scalar(select(func.count()).select_from(Delivery)) == 1


def test_weekly_means_the_subscribers_local_weekday_and_hour(session, taxo, settings):
    make_item(session, "x", ingested_at=T0 - timedelta(days=1))
    # Bishkek is UTC+6: Monday 13:00 there is Monday 07:00 UTC (T0).
    make_subscriber(session, "bishkek@example.org", tz="Asia/Bishkek", weekday=0, hour=13)
    make_subscriber(session, "vienna@example.org", tz="Europe/Vienna", weekday=0, hour=13)
    make_subscriber(session, "ny@example.org", tz="America/New_York", weekday=0, hour=3)
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, settings=settings)
    session.commit()
    assert set(carried(session, run.run_id)) == {"bishkek@example.org", "ny@example.org"}


def test_inactive_and_suppressed_subscribers_are_not_planned(session, taxo, settings):
    from digest.subscribers import suppress

    make_item(session, "x")
    make_subscriber(session, "gone@example.org", status="unsubscribed")
    make_subscriber(session, "pending@example.org", status="pending")
    make_subscriber(session, "bounced@example.org")
    make_subscriber(session, "ok@example.org")
    suppress(session, "bounced@example.org", SuppressionReason.hard_bounce)
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    assert set(carried(session, run.run_id)) == {"ok@example.org"}


def test_immediate_alert_goes_once_to_matching_immediate_subscribers(session, taxo):
    item = make_item(session, "vote", themes=[taxo.elections])
    make_subscriber(session, "alerts@example.org", {"themes": [taxo.elections]}, frequency="immediate")
    make_subscriber(session, "other@example.org", {"themes": [taxo.policing]}, frequency="immediate")
    make_subscriber(session, "weekly@example.org", {"themes": [taxo.elections]})
    session.commit()
    run = plan_immediate_run(session, item.id)
    session.commit()
    again = plan_immediate_run(session, item.id)
    # Only matching immediate subscribers get a row: no empty alert is even planned.
    assert carried(session, run.run_id) == {"alerts@example.org": {"vote"}}
    assert not again.created


def test_adhoc_send_by_theme_and_dates_is_unique_per_request(session, taxo):
    make_item(session, "old policing", themes=[taxo.policing], published_at=T0 - timedelta(days=40))
    make_item(session, "new policing", themes=[taxo.policing], published_at=T0 - timedelta(days=2))
    make_item(session, "new gender", themes=[taxo.gender], published_at=T0 - timedelta(days=2))
    make_subscriber(session, "p@example.org", {"themes": [taxo.policing]})
    make_subscriber(session, "g@example.org", {"themes": [taxo.gender]})
    session.commit()
    query = AdhocQuery(themes=("Policing",), published_from=T0 - timedelta(days=7))
    run = plan_adhoc_run(session, query)
    session.commit()
    assert carried(session, run.run_id) == {"p@example.org": {"new policing"}, "g@example.org": set()}
    assert not plan_adhoc_run(session, query).created


def test_adhoc_with_unknown_theme_names_the_valid_ones(session, taxo):
    from digest.errors import UnknownTaxonomyError

    with pytest.raises(UnknownTaxonomyError, match="Policing"):
        plan_adhoc_run(session, AdhocQuery(themes=("Poliicing",)))


def test_preview_writes_nothing(session, taxo, settings):
    make_item(session, "p", themes=[taxo.policing])
    sub = make_subscriber(session, "prev@example.org", {"themes": [taxo.policing]})
    session.commit()
    assert [i.title for i in preview_items(session, sub, as_of=T0, settings=settings)] == ["p"]
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_planning_is_set_based_not_one_query_per_subscriber(session, taxo, settings):
    """The number of SQL statements does not grow with the number of subscribers."""

    def statements_for(n: int, now) -> int:
        for k in range(n):
            make_subscriber(session, f"s{now.day}-{k}@example.org", {"themes": [taxo.policing]})
        make_item(session, f"p{now.day}", themes=[taxo.policing], ingested_at=now - timedelta(hours=1))
        session.commit()
        count = 0

        def on_execute(*_args):
            nonlocal count
            count += 1

        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", on_execute)
        try:
            plan_scheduled_run(session, "weekly", now=now, everyone=True, settings=settings)
            session.commit()
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
        return count

    small = statements_for(3, T0)
    large = statements_for(60, T0 + timedelta(days=7))
    assert large == small


def test_no_alert_run_for_an_item_nobody_wants_at_once_or_an_archive_item(session, taxo):
    wanted_by_weekly_only = make_item(session, "quiet", themes=[taxo.policing])
    archive = make_item(session, "archive", themes=[taxo.elections], backfill=True)
    make_subscriber(session, "alerts@example.org", {"themes": [taxo.elections]}, frequency="immediate")
    make_subscriber(session, "weekly@example.org", {"themes": [taxo.policing]})
    session.commit()
    assert plan_immediate_run(session, wanted_by_weekly_only.id).run_id is None
    assert plan_immediate_run(session, archive.id).run_id is None
    assert session.scalar(select(func.count()).select_from(DigestRun)) == 0


def test_addresses_are_one_person_whatever_their_capitals(session, taxo):
    from digest.subscribers import suppress, upsert_subscriber

    sub, created = upsert_subscriber(session, "Ana.Policing@Example.ORG", smtputf8=False)
    again, created_again = upsert_subscriber(session, "ana.policing@example.org", smtputf8=False)
    assert created and not created_again and again.id == sub.id
    assert sub.email == "ana.policing@example.org"
    suppress(session, "ANA.POLICING@example.org", SuppressionReason.hard_bounce)
    assert sub.status == "suppressed"


def test_an_operator_may_pick_archive_items_for_an_adhoc_send(session, taxo, settings):
    archive = make_item(session, "archive", themes=[taxo.policing], backfill=True)
    make_subscriber(session, "p@example.org", {"themes": [taxo.policing]})
    session.commit()
    scheduled = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(archive.id,)))
    assert carried(session, scheduled.run_id)["p@example.org"] == set()
    assert carried(session, adhoc.run_id)["p@example.org"] == {"archive"}


def test_unconfirmed_addresses_are_forgotten_once_their_link_has_expired(session, taxo):
    from digest.subscribers import purge_unconfirmed

    old = make_subscriber(session, "old-pending@example.org", status="pending")
    old.created_at = T0 - timedelta(days=9)
    fresh = make_subscriber(session, "new-pending@example.org", status="pending")
    fresh.created_at = T0 - timedelta(days=1)
    active = make_subscriber(session, "active@example.org")
    active.created_at = T0 - timedelta(days=90)
    session.commit()
    assert purge_unconfirmed(session, now=T0) == 1
    session.commit()
    assert sorted(session.scalars(select(Subscriber.email))) == ["active@example.org",
                                                                "new-pending@example.org"]
