"""Renaming, merging and moving terms on SQLite and PostgreSQL: the items and the subscribers'
filters follow, so a subscriber's selection is the same set of items before and after (a
merge excepted, where a filter that chose only some of the terms now takes them all)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from digest.errors import UnknownTaxonomyError, ValidationError
from digest.models import (
    Item,
    Location,
    Source,
    SourceKind,
    SubscriberFilter,
    Theme,
    filter_themes,
    item_themes,
)
from digest.selection.preview import matching_items
from digest.taxonomy_edit import merge, move, rename
from tests.factories import T0, Taxo, make_item, make_subscriber

SINCE = T0 - timedelta(days=30)


def selected(session, sub) -> set[str]:
    session.expire_all()
    return {item.title for item in matching_items(session, sub.id, since=SINCE)}


@pytest.fixture
def taxo(session):
    t = Taxo(session)
    session.flush()
    return t


@pytest.fixture
def items(session, taxo):
    return {
        "a": make_item(session, "a", themes=[taxo.policing], locations=[taxo.serbia],
                       ctype=taxo.news),
        "b": make_item(session, "b", themes=[taxo.gender], locations=[taxo.montenegro]),
        "c": make_item(session, "c", themes=[taxo.policing, taxo.gender],
                       locations=[taxo.bishkek]),
        "d": make_item(session, "d", themes=[taxo.elections], ctype=taxo.news),
    }


def test_a_renamed_term_keeps_its_items_and_filters(session, taxo, items):
    sub = make_subscriber(session, "ann@example.org", {"themes": [taxo.policing]})
    before = selected(session, sub)
    term = rename(session, "theme", "policing", "Police reform")
    assert (term.name, term.slug) == ("Police reform", "police-reform")
    assert selected(session, sub) == before == {"a", "c"}
    # Only the spelling may change too.
    assert rename(session, "theme", "Police reform", "police REFORM").name == "police REFORM"


def test_renaming_onto_another_terms_name_is_refused_and_suggests_merge(session, taxo):
    with pytest.raises(ValidationError, match="merge them: digest taxonomy merge theme "
                                              "'Policing' --into 'Elections'"):
        rename(session, "theme", "Policing", "elections")
    with pytest.raises(UnknownTaxonomyError, match="valid themes are"):
        rename(session, "theme", "Nope", "Other")


def test_merged_themes_become_one_without_duplicate_rows_and_a_filter_that_had_both_takes_the_same_items(  # noqa: E501
        session, taxo, items):
    both = make_subscriber(session, "both@example.org",
                           {"themes": [taxo.policing, taxo.gender]})
    only_gender = make_subscriber(session, "gender@example.org", {"themes": [taxo.gender]})
    before = selected(session, both)
    merge(session, "theme", ["Gender equality"], into="Policing")
    assert selected(session, both) == before == {"a", "b", "c"}
    # Merging says the terms are one: a filter that chose one now takes the other's items.
    assert selected(session, only_gender) == {"a", "b", "c"}
    # Item c had both: one row, not two; the filter that had both: one row.
    assert session.scalar(select(func.count()).select_from(item_themes)
                          .where(item_themes.c.item_id == items["c"].id)) == 1
    assert session.scalar(select(func.count()).select_from(filter_themes)
                          .where(filter_themes.c.filter_id == both.filters[0].id)) == 1
    assert session.scalars(select(Theme.name).order_by(Theme.name)).all() == [
        "Elections", "Policing"]


def test_merged_locations_keep_their_places_under_the_survivor(session, taxo, items):
    region = Location(slug="balkans", name="Balkans")
    session.add(region)
    session.flush()
    sub = make_subscriber(session, "see@example.org", {"locations": [region, taxo.see]})
    before = selected(session, sub)
    merge(session, "location", ["Balkans"], into="South-Eastern Europe")
    assert selected(session, sub) == before == {"a", "b"}
    session.expire_all()
    assert session.get(Location, taxo.serbia.id).parent_id == taxo.see.id


def test_merged_content_types_point_every_item_at_the_survivor(session, taxo, items):
    release = taxo.press
    items["b"].content_type = release
    sub = make_subscriber(session, "types@example.org", {"types": [taxo.news, release]})
    before = selected(session, sub)
    merge(session, "content_type", ["Press release"], into="News")
    assert selected(session, sub) == before == {"a", "b", "d"}


def test_a_term_moved_to_another_facet_takes_its_items_and_filters_along(session, taxo, items):
    # A filter that chose only the term in its facet, and one that chose it with another value
    # (it is split in two, so it still takes the same items).
    alone = make_subscriber(session, "alone@example.org", {"themes": [taxo.gender]})
    mixed = make_subscriber(session, "mixed@example.org",
                            {"themes": [taxo.gender, taxo.elections], "types": [taxo.news]})
    before = (selected(session, alone), selected(session, mixed))
    report = move(session, "Gender equality", "theme", "location")
    assert (report.term.name, report.items) == ("Gender equality", 2)
    assert report.split_filters == [mixed.filters[0].id]
    assert (selected(session, alone), selected(session, mixed)) == before
    assert session.scalar(select(Theme).where(Theme.slug == "gender-equality")) is None
    c = session.get_one(Item, items["c"].id)
    assert {loc.name for loc in c.locations} == {"Gender equality", "OSCE Programme Office in "
                                                 "Bishkek"}
    assert len(session.get_one(type(mixed), mixed.id).filters) == 2


def test_a_filter_that_chose_values_in_the_new_facet_too_is_named_as_widened(session, taxo,
                                                                             items):
    sub = make_subscriber(session, "wide@example.org",
                          {"themes": [taxo.gender], "locations": [taxo.serbia]})
    report = move(session, "Gender equality", "theme", "location")
    assert report.widened_filters == [sub.filters[0].id]
    assert "take more items" in report.summary("theme")


def test_moving_a_term_to_content_types_is_refused_for_items_with_a_type_unless_told(
        session, taxo, items):
    # Item a has Policing and the type News already; an item has one type.
    with pytest.raises(ValidationError, match=rf"ids {items['a'].id}\b.*--keep-existing-type"):
        move(session, "Policing", "theme", "content_type")
    report = move(session, "Policing", "theme", "content_type", keep_existing_type=True)
    assert report.kept_own_type == [items["a"].id]
    session.expire_all()
    assert session.get_one(Item, items["a"].id).content_type.name == "News"
    assert session.get_one(Item, items["c"].id).content_type.name == "Policing"


def test_a_content_type_moved_to_themes_leaves_its_items_without_a_type(session, taxo, items):
    sub = make_subscriber(session, "news@example.org", {"types": [taxo.news]})
    before = selected(session, sub)
    move(session, "News", "content_type", "theme")
    assert selected(session, sub) == before == {"a", "d"}
    session.expire_all()
    a = session.get_one(Item, items["a"].id)
    assert a.content_type is None and "News" in {t.name for t in a.themes}
    assert session.scalars(select(SubscriberFilter)).one().content_types == []


def test_moving_onto_an_existing_term_of_that_name_reuses_it(session, taxo, items):
    session.add(Location(slug="elections", name="Elections"))
    session.flush()
    move(session, "Elections", "theme", "location")
    assert session.scalar(select(func.count()).select_from(Location)
                          .where(Location.slug == "elections")) == 1
    with pytest.raises(ValidationError, match="already"):
        move(session, "Elections", "location", "location")


def test_a_sources_default_location_and_type_follow_a_rename_a_merge_and_a_move(session, taxo):
    source = Source(url="https://newsroom.example.org/feed", kind=SourceKind.feed,
                    default_location="osce mission to serbia", default_content_type="News")
    session.add(source)
    session.flush()
    rename(session, "location", "OSCE Mission to Serbia", "Mission in Serbia")
    merge(session, "content_type", ["News"], into="Press release")
    assert (source.default_location, source.default_content_type) == (
        "Mission in Serbia", "Press release")
    move(session, "Press release", "content_type", "theme")
    assert source.default_content_type is None  # a theme is no source default
    move(session, "Mission in Serbia", "location", "content_type")
    assert (source.default_location, source.default_content_type) == (None, "Mission in Serbia")
