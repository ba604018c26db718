"""``explain``: why an item did or did not reach a reader, on SQLite and PostgreSQL; and, on
PostgreSQL over random readers and items, its verdict is the selection rule's."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import literal, select

from digest.delivery import send_deliveries
from digest.errors import ValidationError
from digest.models import (
    ContentType,
    Item,
    Location,
    Subscriber,
    SuppressionReason,
    Theme,
    utcnow,
)
from digest.records import pause_domain
from digest.selection import (
    item_matches_subscriber,
    plan_due_alerts,
    plan_scheduled_run,
    preview_items,
)
from digest.selection.explain import Verdict, explain, find_item
from digest.subscribers import suppress
from tests.factories import T0, make_item, make_subscriber


def test_a_region_filter_matches_a_place_in_it_and_says_which_facet(session, taxo, settings):
    t = taxo
    item = make_item(session, "Police reform", themes=[t.policing], locations=[t.montenegro],
                     ctype=t.news)
    sub = make_subscriber(session, "a@example.org",
                          {"themes": [t.gender]},
                          {"themes": [t.policing], "locations": [t.see]})
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.matches and e.verdict == Verdict.in_next_digest
    first, second = e.filters
    assert not first.matched and [f.matched for f in first.facets] == [False, True, True]
    assert second.matched
    place = second.facets[1]
    assert place.hits == ["South-Eastern Europe"]
    assert place.item_has == ["OSCE Mission to Montenegro (in South-Eastern Europe)"]
    text = "\n".join(e.sentences)
    assert "theme: wants Gender equality; the item has Policing: no match" in text
    assert "matched by South-Eastern Europe" in text
    assert "content type: any" in text


def test_an_item_no_filter_takes_is_no_match(session, taxo, settings):
    t = taxo
    item = make_item(session, "Elections", themes=[t.elections], locations=[t.bishkek])
    sub = make_subscriber(session, "b@example.org", {"locations": [t.see]})
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert not e.matches and e.verdict == Verdict.no_match
    assert "None of your filters matches this item" in " ".join(e.sentences)


def test_archive_backfill_is_never_in_a_scheduled_digest(session, taxo, settings):
    item = make_item(session, "Old report", themes=[taxo.policing], backfill=True,
                     published_at=T0 - timedelta(days=400))
    sub = make_subscriber(session, "c@example.org")
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.matches and e.verdict == Verdict.backfill and not e.next_digest_would_carry
    assert "archive backfill" in e.sentences[0]


def test_an_item_before_the_watermark_that_no_digest_carried_missed_the_window(
        session, taxo, settings):
    item = make_item(session, "Early", ingested_at=T0 - timedelta(days=3))
    sub = make_subscriber(session, "d@example.org", watermark=T0 - timedelta(days=1))
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.window.position == "before" and e.verdict == Verdict.missed_window
    assert e.window.watermark == T0 - timedelta(days=1)
    later = make_item(session, "Late", ingested_at=T0 + timedelta(hours=2))
    assert explain(session, sub, later, settings=settings, as_of=T0).verdict == Verdict.not_yet


def test_the_next_weekly_slot_is_the_readers_local_hour(session, taxo, settings):
    item = make_item(session, "News")
    sub = make_subscriber(session, "e@example.org", tz="Europe/Vienna", weekday=2, hour=9)
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)  # Monday 07:00 UTC
    assert e.window.next_slot == T0 + timedelta(days=2)  # Wednesday 09:00 Vienna = 07:00 UTC
    assert "due 2025-10-15 07:00 UTC" in e.sentences[0]


def test_a_sent_item_names_the_ledger_row_and_the_delivery_with_its_reply(
        session, taxo, settings, smtp_sink):
    item = make_item(session, "Sent one", themes=[taxo.policing])
    sub = make_subscriber(session, "f@example.org", {"themes": [taxo.policing]})
    session.commit()
    planned = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.verdict == Verdict.on_its_way and e.ledger_delivery_id == planned.pending_ids[0]
    send_deliveries(planned.pending_ids, settings=settings)
    session.expire_all()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.verdict == Verdict.sent
    (carried,) = e.deliveries
    assert carried.ledger and carried.status == "sent" and carried.smtp_code == 250
    text = "\n".join(e.sentences)
    assert f"carried by delivery {carried.delivery_id}" in text
    assert "the server answered: 250" in text


def test_suppression_unsubscription_and_a_paused_domain_are_named(session, taxo, settings):
    item = make_item(session, "Blocked", ingested_at=T0 - timedelta(hours=1))
    sub = make_subscriber(session, "g@blocked.example")
    gone = make_subscriber(session, "h@example.org", status="unsubscribed")
    session.commit()
    pause_domain(session, "blocked.example", T0 + timedelta(hours=1), "550 5.7.1 blocked",
                 now=T0)
    suppress(session, sub.email, SuppressionReason.admin, "asked by phone")
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.verdict == Verdict.blocked and e.suppression == "admin"
    assert e.paused_until == T0 + timedelta(hours=1)
    codes = {r.code for r in e.reasons if not r.ok}
    assert {"suppressed", "domain_paused"} <= codes
    assert "asked by phone" in " ".join(e.sentences)
    left = explain(session, gone, item, settings=settings, as_of=T0)
    assert left.verdict == Verdict.blocked and "unsubscribed" in left.sentences[0]


def test_an_immediate_reader_is_told_an_item_too_old_for_an_alert_will_not_come(
        session, taxo, settings):
    item = make_item(session, "Alert me", ingested_at=T0 - timedelta(days=3))
    sub = make_subscriber(session, "i@example.org", frequency="immediate")
    session.commit()
    e = explain(session, sub, item, settings=settings, as_of=T0)
    assert e.verdict == Verdict.no_alert and e.window.next_slot is None
    assert "too old to be alerted" in e.sentences[0]
    assert {r.code for r in e.reasons if not r.ok} == {"alert_too_old"}


def test_an_item_waiting_for_its_alert_window_is_in_the_next_alert_not_blamed_on_the_reader(
        session, taxo, settings):
    """An immediate reader of everything, beside readers with filters: before the window
    closes explain says the next alert carries it; once planned, that the alert does."""
    t = taxo
    sub = make_subscriber(session, "everything@example.org", frequency="immediate")
    make_subscriber(session, "gender@example.org", {"themes": [t.gender]}, frequency="immediate")
    item = make_item(session, "Border police training", themes=[t.policing], ingested_at=T0)
    session.commit()

    waiting = explain(session, sub, item, settings=settings, as_of=T0 + timedelta(minutes=3))
    assert waiting.verdict == Verdict.in_next_alert
    assert "will be in the next alert, whose window closes by 2025-10-13 07:10 UTC" in (
        waiting.sentences[0])
    assert "not an active" not in " ".join(waiting.sentences)

    other = make_item(session, "Gender equality forum", themes=[t.gender], ingested_at=T0)
    elsewhere = make_subscriber(session, "police@example.org", {"themes": [t.policing]},
                                frequency="immediate")
    session.commit()
    not_theirs = explain(session, elsewhere, other, settings=settings,
                         as_of=T0 + timedelta(minutes=3))
    assert not_theirs.verdict == Verdict.no_match
    assert "next alert" not in " ".join(not_theirs.sentences)

    runs = plan_due_alerts(session, settings=settings, now=T0 + timedelta(minutes=10), since=T0)
    session.commit()
    carried = explain(session, sub, item, settings=settings, as_of=T0 + timedelta(minutes=11))
    assert carried.verdict == Verdict.on_its_way and carried.alert is not None
    assert carried.alert.run_id == runs[0].run_id
    assert f"alert run {runs[0].run_id} carries it" in " ".join(carried.sentences)


def test_an_item_is_found_by_id_url_or_guid_and_bad_references_say_so(session, taxo):
    item = make_item(session, "Findable")
    session.commit()
    assert find_item(session, str(item.id)) is item
    assert find_item(session, item.guid) is item
    assert find_item(session, item.url) is item
    for bad, words in (("999999", "no item with id 999999"), ("", "give an item"),
                       ("https://nowhere.example/x", "no item with URL or guid"),
                       ("99999999999999", "no item with id")):
        with pytest.raises(ValidationError, match=words):
            find_item(session, bad)
    twin = make_item(session, "Twin")
    twin.url = item.url
    session.commit()
    with pytest.raises(ValidationError, match="2 items have this URL"):
        find_item(session, item.url)


# --- the property: explain's verdict is the rule's -------------------------------------------

def _random_world(session, rng: random.Random) -> None:
    themes = [Theme(slug=f"t{n}", name=f"Theme {n}") for n in range(4)]
    types = [ContentType(slug=f"c{n}", name=f"Type {n}") for n in range(3)]
    regions = [Location(slug=f"r{n}", name=f"Region {n}") for n in range(2)]
    session.add_all([*themes, *types, *regions])
    session.flush()
    places = [Location(slug=f"p{n}", name=f"Place {n}",
                       parent_id=rng.choice([None, *(r.id for r in regions)])) for n in range(4)]
    session.add_all(places)
    session.flush()
    locations = regions + places

    def some(values, most=2):
        return rng.sample(values, rng.randint(0, most))

    for n in range(14):
        filters = [{"themes": some(themes), "locations": some(locations), "types": some(types)}
                   for _ in range(rng.randint(0, 3))]
        make_subscriber(session, f"r{n}@example.org", *filters,
                        watermark=rng.choice([None, T0 - timedelta(days=2),
                                              T0 - timedelta(days=10)]))
    for n in range(22):
        make_item(session, f"item {n}", themes=some(themes), locations=some(places),
                  ctype=rng.choice([None, *types]), backfill=rng.random() < 0.15,
                  ingested_at=T0 - timedelta(days=rng.choice([1, 4, 9, 12])))
    session.commit()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_explain_agrees_with_the_matching_rule_and_the_preview_on_postgresql(
        pg_url, monkeypatch, tmp_path, seed):
    from digest import db
    from tests.conftest import _apply_settings

    settings = _apply_settings(monkeypatch, tmp_path, pg_url)
    with db._sessionmaker(pg_url)() as session:
        _random_world(session, random.Random(seed))
        # Some pairs already in the ledger: an earlier digest, planned a week before.
        plan_scheduled_run(session, "weekly", now=T0 - timedelta(days=7), everyone=True,
                           settings=settings)
        session.commit()
        i = Item.__table__
        subs = list(session.scalars(select(Subscriber).order_by(Subscriber.id)))
        items = list(session.scalars(select(Item).order_by(Item.id)))
        pairs = 0
        for sub in subs:
            rule = set(session.scalars(select(i.c.id).where(
                item_matches_subscriber(i, literal(sub.id)))))
            previewed = {it.id for it in preview_items(session, sub, as_of=T0,
                                                       settings=settings)}
            for item in items:
                e = explain(session, sub, item, settings=settings, as_of=T0)
                assert e.matches == (item.id in rule), (sub.email, item.id)
                assert e.next_digest_would_carry == (item.id in previewed), (sub.email, item.id)
                assert (e.verdict == Verdict.no_match) == (not e.matches and not e.deliveries)
                pairs += 1
        assert pairs == len(subs) * len(items) > 250
    assert utcnow() > T0
