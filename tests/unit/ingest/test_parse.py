"""Ingest parsing without a database: cleaning, slugs, listings, RSS/Atom, JSON items."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.errors import IngestError
from digest.ingest import (
    parse_feed,
    parse_json_items,
    parse_listing,
    to_plain_text,
)
from digest.ingest.listing import read_listing_text
from digest.taxonomy import slugify
from tests.conftest import SEED_LISTING, TEST_DATA
from tests.feeds import demo_items

DATA = TEST_DATA


# --- taxonomy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Reform and co-operation in the security sector",
         "reform-and-co-operation-in-the-security-sector"),
        ("Odžak", "odzak"),
        ("  OSCE Mission in   Kosovo ", "osce-mission-in-kosovo"),
        ("Press release", "press-release"),
        ("Київ", "kiiv"),
    ],
)
def test_slugify_is_lowercase_ascii_and_transliterates(name, slug):
    assert slugify(name) == slug


# --- sanitising -----------------------------------------------------------------------------


def test_script_element_is_dropped_with_its_content_and_following_text_kept():
    assert to_plain_text("<script>alert(1)</script>Hello") == "Hello"


def test_plain_text_decodes_entities_drops_tags_and_separates_blocks():
    assert to_plain_text("<b>Tom</b> &amp; <i>Jerry</i>&#39;s") == "Tom & Jerry's"
    assert to_plain_text("<p>one</p><p>two</p>line<br>break") == "one two line break"
    assert to_plain_text("a &lt;b&gt; tag, a < b") == "a <b> tag, a < b"  # text, escaped later
    assert to_plain_text("<style>p{}</style>  many \n\t spaces ") == "many spaces"


# --- the listing ----------------------------------------------------------------------------


def test_seed_listing_parses_with_metadata_and_items_without_metadata():
    items = parse_listing(SEED_LISTING.read_text(encoding="utf-8"))

    assert len(items) == 7
    first = items[0]
    assert first.title == (
        "Jubilee Annual Regional Forensic Conference organized in Montenegro with OSCE support"
    )
    assert first.published_at == datetime(2025, 10, 9, tzinfo=UTC)
    assert first.content_type == "News"
    assert first.locations == ["OSCE Mission to Montenegro"]
    assert first.themes == ["Policing", "Reform and co-operation in the security sector"]
    assert first.summary.startswith("Security and justice can only be achieved")

    webinar = items[1]
    assert webinar.title.startswith("OSCE webinar highlights critical role of women")
    assert webinar.published_at == datetime(2025, 10, 8, tzinfo=UTC)
    assert (webinar.content_type, webinar.themes, webinar.locations) == (None, [], [])
    assert webinar.summary.startswith("The OSCE Transnational Threats Department")

    serbia = items[4]
    assert serbia.locations == [
        "Transnational Threats Department", "OSCE Secretariat", "OSCE Mission to Serbia"
    ]
    assert len(items[5].themes) == 18
    assert "Odžak" in items[5].title
    last = items[-1]  # date line, then end of file without a newline
    assert last.published_at == datetime(2025, 9, 12, tzinfo=UTC) and last.summary == ""
    assert len({item.guid for item in items}) == 7


def test_demo_listing_has_18_items_over_three_weeks():
    items = demo_items()
    assert len(items) == 18
    dates = [item.published_at.date() for item in items]
    assert min(dates).isoformat() == "2025-09-22" and max(dates).isoformat() == "2025-10-10"
    assert {item.content_type for item in items} == {"News", "Press release", None}
    # A listing item's key is its title and date in either form; the store also matches URLs.
    assert all(item.guid.startswith("urn:digest:") for item in items)
    assert all(item.url.startswith("https://newsroom.example.org/items/") for item in items)

    bare = [item for item in items if item.content_type is None]
    assert len(bare) == 1 and bare[0].themes == [] and bare[0].locations == []
    assert any('&' in item.title and '"' in item.title for item in items)


def test_listing_guid_without_url_is_stable_across_case_and_spacing():
    one = parse_listing("Some  Title\nPublishing date: 1 October 2025\nText.")
    two = parse_listing("some title \nPublishing date: 1 Oct 2025\nOther text.")
    other_day = parse_listing("Some Title\nPublishing date: 2 October 2025\n")
    assert one[0].guid == two[0].guid != other_day[0].guid
    assert one[0].url is None


def test_listing_item_with_invalid_date_is_left_out_and_the_others_kept():
    text = (
        "Header\nFirst\nPublishing date: 1 October 2025\nBody\n"
        "Second\nPublishing date: 31 Foo 2025\n"
    )
    assert [item.title for item in parse_listing(text)] == ["First"]
    document = read_listing_text(text)
    assert document.warnings == [
        "line 6: invalid publishing date '31 Foo 2025'; write it as 'D Month YYYY', "
        "e.g. '9 October 2025'; item 'Second' left out"
    ]


def test_listing_where_no_item_can_be_read_is_refused_naming_the_line():
    with pytest.raises(IngestError, match="no item of the listing could be read: line 2"):
        parse_listing("Title\nPublishing date: 31 February 2025\n")


def test_listing_url_must_be_http_and_the_error_names_the_line():
    with pytest.raises(IngestError, match=r"line 3: URL 'javascript:alert\(1\)' is not"):
        parse_listing("Title\nPublishing date: 1 October 2025\nURL: javascript:alert(1)\n")


def test_listing_without_items_is_an_error():
    with pytest.raises(IngestError, match="no items found"):
        parse_listing("Newsroom\nNews and press releases\nNothing here yet.\n")
    with pytest.raises(IngestError, match="no items found"):
        parse_listing("")


def test_listing_strips_html_from_titles_and_summaries():
    items = parse_listing(
        "<script>alert(1)</script>Hello\nPublishing date: 1 October 2025\n"
        "What we do: <b>Youth</b>, , Youth\n<p>Body &amp; <i>more</i></p>\n"
    )
    assert items[0].title == "Hello"
    assert items[0].summary == "Body & more"
    assert items[0].themes == ["Youth"]


# --- feeds ----------------------------------------------------------------------------------


def test_rss_categories_go_to_facets_by_domain_then_by_the_one_facet_their_name_is_known_in():
    rss = (DATA / "ingest-feed.rss").read_bytes()
    items = parse_feed(rss, {"osce-mission-to-skopje": "location", "youth": "theme"})
    assert len(items) == 3
    first = items[0]
    assert first.guid == "rss-item-1"
    assert first.title == "Border police & customs train on risk analysis"
    assert first.summary == "Officers compared profiles. Second paragraph & more."
    assert first.published_at == datetime(2025, 10, 9, 8, 30, tzinfo=UTC)  # +02:00 -> UTC
    assert first.content_type == "News"
    assert first.themes == ["Policing", "Youth"]
    assert first.locations == ["OSCE Mission to Serbia", "OSCE Mission to Skopje"]
    assert first.unfiled == []


def test_a_category_without_a_domain_known_in_no_facet_or_in_several_is_left_unfiled_not_made_a_theme():
    rss = (DATA / "ingest-feed.rss").read_bytes()
    first = parse_feed(rss, {"osce-mission-to-skopje": None})[0]
    # Only the categories with a domain are filed: an office is never filed as a theme.
    assert (first.themes, first.locations, first.content_type) == (
        ["Policing"], ["OSCE Mission to Serbia"], "News")
    assert first.unfiled == [
        ("Youth", "is not a known theme, location or content type"),
        ("OSCE Mission to Skopje", "is known as more than one of theme, location, content type"),
    ]


def test_rss_script_in_title_and_summary_is_removed_and_link_is_the_guid():
    hello = parse_feed((DATA / "ingest-feed.rss").read_bytes())[1]
    assert hello.title == "Hello"
    assert hello.summary == "Plain summary with a tail."
    assert hello.guid == hello.url == "https://newsroom.example.org/items/hello"


def test_rss_non_http_link_is_dropped_and_title_hash_becomes_the_guid():
    dangerous = parse_feed((DATA / "ingest-feed.rss").read_bytes())[2]
    assert dangerous.url is None
    assert dangerous.guid.startswith("urn:digest:")
    assert dangerous.published_at is None


def test_atom_categories_use_scheme_and_label():
    voter, water = parse_feed((DATA / "ingest-feed.atom").read_bytes())
    assert voter.guid == "urn:uuid:4a1d9c57-0000-4000-8000-000000000001"
    assert voter.title == "Election observers & the new voter register"
    assert voter.summary == "The register was checked against three sources."
    assert voter.published_at == datetime(2025, 10, 7, 6, 15, tzinfo=UTC)
    assert (voter.content_type, voter.themes, voter.locations) == (
        "Press release", ["Elections"], ["ODIHR"]
    )
    assert water.published_at == datetime(2025, 10, 6, 7, 0, tzinfo=UTC)  # from <updated>
    assert (water.themes, water.locations) == (
        ["Water management"], ["OSCE Programme Office in Bishkek"]
    )


@pytest.mark.parametrize(
    "data", [b"", b"<html><body><p>Not a feed</p></body></html>", b"plain words"]
)
def test_document_that_is_no_feed_is_an_error(data):
    with pytest.raises(IngestError, match="feed"):
        parse_feed(data)


# --- JSON -----------------------------------------------------------------------------------


def test_json_items_parse_with_defaults_and_utc_dates():
    first, second = parse_json_items((DATA / "ingest-items.json").read_bytes())
    assert first.guid == "json-1"
    assert first.title == "Court monitors publish annual report"
    assert first.summary == "Findings on trial length & transparency."
    assert first.published_at == datetime(2025, 10, 8, 12, 0, tzinfo=UTC)
    assert (first.content_type, first.themes, first.locations) == (
        "Press release", ["Rule of law", "Human rights"], ["OSCE Mission to Serbia"]
    )
    assert second.url is None and second.guid.startswith("urn:digest:")
    assert parse_json_items('{"title": "One object", "published_at": "2025-10-01T10:00:00"}')[
        0
    ].published_at == datetime(2025, 10, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('[{"title": "ok"}, {"title": "x", "published_at": "yesterday"}]',
         r"item 1: field 'published_at'"),
        ('[{"summary": "no title"}]', r"item 0: field 'title'"),
        ('[{"title": "t", "themes": "Youth"}]', r"item 0: field 'themes'"),
        ('[{"title": "t", "theme": ["Youth"]}]', r"item 0: field 'theme'.*[Ee]xtra"),
        ('[{"title": "t", "url": "javascript:alert(1)"}]', r"item 0: field 'url'.*http"),
        ('[{"title": "t"}, 3]', r"item 1: field '\(the item itself\)'"),
        ('{"title": ', r"not valid JSON: .* line 1"),
        ("[]", "non-empty list"),
        ('"just a string"', "object or a non-empty list"),
    ],
)
def test_bad_json_names_the_item_index_and_field(document, message):
    with pytest.raises(IngestError, match=message):
        parse_json_items(document)
