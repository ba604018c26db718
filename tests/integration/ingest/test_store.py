"""Ingest: listing/feed/JSON parsing, sanitising, fetching, and storing on SQLite + PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from digest.errors import IngestError, UnknownTaxonomyError
from digest.ingest import (
    IngestReport,
    ItemIn,
    ingest_feed,
    ingest_json,
    ingest_listing,
    store_items,
)
from digest.models import ContentType, Item, Location, Theme
from digest.taxonomy import known_facets, list_names, resolve
from tests.conftest import TEST_DATA
from tests.feeds import DEMO, demo_items

DATA = TEST_DATA
NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)


def counts(session) -> dict[str, int]:
    session.rollback()  # read what is committed, not a stale snapshot
    return {
        model.__tablename__: session.scalar(select(func.count()).select_from(model))
        for model in (Item, Theme, Location, ContentType)
    }


class SelectCounter:
    """Counts SELECT statements sent on an engine (to prove look-ups are set-based)."""

    def __init__(self, engine):
        self.engine, self.count = engine, 0

    def _on_execute(self, conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            self.count += 1

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


def test_resolve_matches_names_case_and_whitespace_insensitively(session):
    created = resolve(session, "theme", ["Rule of law", "Youth"], create=True)
    assert created.created == ["Rule of law", "Youth"]
    session.commit()

    found = resolve(session, "theme", ["  rule OF   law", "YOUTH", "Rule-of-law"], create=False)
    assert [t.name for t in found] == ["Rule of law", "Youth"]
    assert found.created == []


def test_resolve_unknown_name_without_create_raises_with_valid_names(session):
    resolve(session, "content_type", ["News", "Press release"], create=True)
    session.commit()
    with pytest.raises(UnknownTaxonomyError) as caught:
        resolve(session, "content_type", ["News", "Blog post"], create=False)
    assert caught.value.facet == "content_type"
    assert caught.value.values == ["Blog post"]
    assert caught.value.valid == ["News", "Press release"]
    assert "Blog post" in str(caught.value) and "Press release" in str(caught.value)
    assert list_names(session, "content_type") == ["News", "Press release"]


def test_resolve_uses_one_select_per_call_whatever_the_number_of_names(session):
    resolve(session, "location", [f"Place {n}" for n in range(40)], create=True)
    session.commit()
    with SelectCounter(session.get_bind()) as counter:
        found = resolve(session, "location", [f"place {n}" for n in range(40)], create=False)
    assert len(found) == 40
    assert counter.count == 1


def test_created_location_is_linked_to_its_region_from_the_data_file(session):
    found = resolve(
        session, "location", ["OSCE Mission to Montenegro", "OSCE Mission to Serbia"], create=True
    )
    assert found.created == [
        "OSCE Mission to Montenegro", "South-Eastern Europe", "OSCE Mission to Serbia"
    ]
    session.commit()
    montenegro, serbia = found
    assert montenegro.parent is serbia.parent
    assert montenegro.parent.name == "South-Eastern Europe"
    assert montenegro.parent.parent is None
    assert session.scalar(select(func.count()).select_from(Location)) == 3


def test_a_region_named_as_a_location_is_the_same_row_as_the_parent(session):
    found = resolve(
        session, "location", ["Transnational Threats Department", "OSCE Secretariat"], create=True
    )
    session.commit()
    department, secretariat = found
    assert department.parent is secretariat
    assert found.created == ["Transnational Threats Department", "OSCE Secretariat"]


def test_known_facets_maps_slugs_to_their_facet(session):
    resolve(session, "location", ["OSCE Mission to Skopje"], create=True)
    resolve(session, "theme", ["Youth"], create=True)
    session.commit()
    known = known_facets(session)
    assert known["osce-mission-to-skopje"] == "location"
    assert known["south-eastern-europe"] == "location"
    assert known["youth"] == "theme"


# --- storing ----------------------------------------------------------------------------------


def test_store_inserts_items_with_taxonomy_and_reports_created_names(session):
    report = store_items(session, demo_items(), source="demo", now=NOW, max_age_days=30)
    session.commit()

    assert len(report.new_item_ids) == 18
    assert report.updated_item_ids == [] and report.unchanged_count == 0
    assert "Policing" in report.created["theme"]
    assert set(report.created["content_type"]) == {"News", "Press release"}
    assert {"OSCE Mission to Montenegro", "South-Eastern Europe", "OSCE Institutions"} <= set(
        report.created["location"]
    )
    assert report.summary().startswith("18 new, 0 updated, 0 unchanged; created theme: ")

    item = session.scalar(select(Item).where(Item.url.like("%community-policing-forum%")))
    assert item.ingested_at == NOW and item.source == "demo" and item.is_backfill is False
    assert item.content_type.name == "News"
    assert [t.name for t in item.themes] == ["Human rights", "Policing"]
    assert [loc.name for loc in item.locations] == ["OSCE Mission to Montenegro"]
    assert item.locations[0].parent.name == "South-Eastern Europe"
    bishkek = session.scalar(
        select(Location).where(Location.slug == "osce-programme-office-in-bishkek")
    )
    assert bishkek.parent.name == "Central Asia"
    bare = session.scalar(select(Item).where(Item.title.like("Notes from a visit%")))
    assert bare.content_type is None and bare.themes == [] and bare.locations == []


def test_store_is_set_based(session):
    with SelectCounter(session.get_bind()) as counter:
        store_items(session, demo_items(), source="demo", now=NOW, max_age_days=30)
    # 3 taxonomy look-ups + 1 for existing items (no matches: no relationship loads)
    assert counter.count <= 4
    session.commit()
    with SelectCounter(session.get_bind()) as counter:
        report = store_items(session, demo_items(), source="demo", now=NOW, max_age_days=30)
    assert report.unchanged_count == 18
    assert counter.count <= 6  # + 2 relationship loads for all matched items at once


def test_duplicates_within_one_batch_are_stored_once_and_the_last_copy_wins(session):
    first = ItemIn(guid="g-1", url="https://newsroom.example.org/items/a", title="Old title")
    again = ItemIn(guid="g-1", url="https://newsroom.example.org/items/a", title="New title")
    same_url = ItemIn(guid="g-2", url="https://newsroom.example.org/items/a", title="Newest")
    other = ItemIn(guid="g-3", url=None, title="Other")
    report = store_items(session, [first, again, same_url, other], source="t", now=NOW, max_age_days=30)
    session.commit()
    assert len(report.new_item_ids) == 2 and report.duplicates_in_batch == 2
    titles = sorted(session.scalars(select(Item.title)))
    assert titles == ["Newest", "Other"]
    assert "2 duplicates skipped" in report.summary()


def test_second_run_of_the_same_items_adds_nothing(session):
    store_items(session, demo_items(), source="demo", now=NOW, max_age_days=30)
    session.commit()
    report = store_items(
        session, demo_items(), source="demo", now=NOW + timedelta(days=1), max_age_days=30
    )
    session.commit()
    assert report.new_item_ids == [] and report.updated_item_ids == []
    assert report.unchanged_count == 18 and report.created == {}
    assert counts(session)["items"] == 18


def test_changed_item_is_updated_but_keeps_ingested_at(session):
    original = ItemIn(
        guid="g-1", url="https://newsroom.example.org/items/a", title="First wording",
        summary="s", published_at=datetime(2025, 10, 1, tzinfo=UTC), themes=["Youth"],
    )
    first = store_items(session, [original], source="t", now=NOW, max_age_days=30)
    session.commit()
    later = NOW + timedelta(days=3)
    edited = ItemIn(
        guid="g-1", url="https://newsroom.example.org/items/a", title="Second wording",
        summary="s2", published_at=datetime(2025, 10, 1, tzinfo=UTC),
        themes=["Youth", "Elections"], locations=["OSCE Mission to Serbia"], content_type="News",
    )
    report = store_items(session, [edited], source="t", now=later, max_age_days=30)
    session.commit()

    assert report.new_item_ids == [] and report.updated_item_ids == first.new_item_ids
    assert report.created == {
        "theme": ["Elections"],
        "location": ["OSCE Mission to Serbia", "South-Eastern Europe"],
        "content_type": ["News"],
    }
    session.expire_all()
    item = session.get(Item, first.new_item_ids[0])
    assert item.title == "Second wording" and item.summary == "s2"
    assert item.ingested_at == NOW and item.updated_at == later
    assert [t.name for t in item.themes] == ["Elections", "Youth"]
    assert item.content_type.name == "News"
    assert report.summary().startswith("0 new, 1 updated, 0 unchanged")


def test_item_known_by_url_under_another_guid_is_the_same_item(session):
    listing = ItemIn(guid="https://newsroom.example.org/items/a",
                     url="https://newsroom.example.org/items/a", title="From the listing")
    store_items(session, [listing], source="listing", now=NOW, max_age_days=30)
    session.commit()
    from_feed = ItemIn(guid="tag:feed,2025:42", url="https://newsroom.example.org/items/a",
                       title="From the feed")
    report = store_items(session, [from_feed], source="feed", now=NOW, max_age_days=30)
    session.commit()
    assert report.new_item_ids == [] and len(report.updated_item_ids) == 1
    assert counts(session)["items"] == 1


def test_items_older_than_the_maximum_age_are_backfill(session):
    now = datetime(2025, 10, 20, tzinfo=UTC)
    report = store_items(session, demo_items(), source="demo", now=now, max_age_days=20)
    session.commit()
    # Published before 30 September 00:00 UTC: 29 (x2), 26, 25, 24, 23, 22 (x2) September.
    assert len(report.backfill_ids) == 8
    backfill = session.scalars(select(Item).where(Item.is_backfill)).all()
    assert {item.id for item in backfill} == set(report.backfill_ids)
    assert min(item.published_at for item in backfill) == datetime(2025, 9, 22, tzinfo=UTC)
    assert max(item.published_at for item in backfill) == datetime(2025, 9, 29, tzinfo=UTC)
    assert set(report.backfill_ids) <= set(report.new_item_ids)
    assert "8 backfill (not mailed)" in report.summary()


def test_the_entry_points_take_the_maximum_age_from_the_settings_passed(settings, session):
    three_days = settings.model_copy(update={"max_item_age_days": 3})
    now = datetime(2025, 10, 10, tzinfo=UTC)
    report = ingest_listing(DEMO, settings=three_days, now=now)
    # Fresh: published on or after 7 October (10, 9, 8, 7 October).
    assert len(report.new_item_ids) - len(report.backfill_ids) == 4


def test_naive_now_is_refused(session):
    with pytest.raises(ValueError, match="timezone-aware"):
        store_items(session, demo_items(), source="demo", now=datetime(2025, 10, 10), max_age_days=30)


# --- entry points: one transaction, nothing half-written ------------------------------------


def test_ingest_listing_json_and_feed_files_store_everything(settings, session):
    listing = ingest_listing(DEMO, now=NOW, settings=settings)
    json_report = ingest_json(DATA / "ingest-items.json", now=NOW, settings=settings)
    text_report = ingest_json('{"title": "Pushed as text", "guid": "pushed-1"}', now=NOW, settings=settings)
    rss = ingest_feed(DATA / "ingest-feed.rss", now=NOW, settings=settings)
    atom = ingest_feed(str(DATA / "ingest-feed.atom"), now=NOW, settings=settings)
    assert [len(r.new_item_ids) for r in (listing, json_report, text_report, rss, atom)] == [
        18, 2, 1, 3, 2
    ]
    assert isinstance(listing, IngestReport)
    assert counts(session)["items"] == 26
    source = session.scalar(select(Item.source).where(Item.guid == "rss-item-1"))
    assert source.startswith("feed:") and source.endswith("ingest-feed.rss")


def test_feed_category_known_in_the_database_keeps_its_facet(settings, session):
    resolve(session, "location", ["OSCE Mission to Skopje"], create=True)
    resolve(session, "theme", ["Youth"], create=True)
    session.commit()
    ingest_feed(DATA / "ingest-feed.rss", now=NOW, settings=settings)
    item = session.scalar(select(Item).where(Item.guid == "rss-item-1"))
    assert [loc.name for loc in item.locations] == [
        "OSCE Mission to Serbia", "OSCE Mission to Skopje"
    ]
    assert [t.name for t in item.themes] == ["Policing", "Youth"]


def test_malformed_feed_writes_nothing(settings, session):
    ingest_listing(DEMO, now=NOW, settings=settings)
    before = counts(session)
    with pytest.raises(IngestError, match="malformed feed"):
        ingest_feed(DATA / "ingest-malformed.rss", settings=settings)
    assert counts(session) == before


def test_bad_json_writes_nothing(settings, session):
    with pytest.raises(IngestError, match="item 1: field 'published_at'"):
        ingest_json('[{"title": "good", "themes": ["Youth"]}, {"title": "b", "published_at": "x"}]', settings=settings)
    assert counts(session) == {"items": 0, "themes": 0, "locations": 0, "content_types": 0}


def test_unreadable_listing_names_the_path_and_the_reason(settings, session, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Titre\nPublishing date: 1 October 2025\nCaf\xe9".encode("latin-1"))
    cases = [
        (tmp_path / "missing.txt", "no such file"),
        (tmp_path, "directory"),
        (latin1, "not UTF-8"),
    ]
    for path, reason in cases:
        with pytest.raises(IngestError, match=reason) as caught:
            ingest_listing(path, settings=settings)
        assert str(path) in str(caught.value)
    with pytest.raises(IngestError, match="no such file"):
        ingest_feed(tmp_path / "missing.rss", settings=settings)
    with pytest.raises(IngestError, match="no such file"):
        ingest_json(tmp_path / "missing.json", settings=settings)
    assert counts(session)["items"] == 0


# --- fetching over real HTTP ------------------------------------------------------------------


def test_ingest_feed_from_an_http_url(settings, session, feed_server):
    report = ingest_feed(f"{feed_server}/feed.xml", now=NOW, settings=settings)
    assert len(report.new_item_ids) == 3
    assert counts(session)["items"] == 3
