"""Feed categories without a domain, on SQLite and PostgreSQL: filed in the one facet their
name is known in (the database, or regions.json's places), otherwise reported and left
unfiled, never made a theme by default (so location and type filters still find the item)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from digest.ingest import ingest_feed
from digest.models import Item, Theme
from digest.subscribers import FilterSpec, upsert_subscriber
from digest.taxonomy import known_facets, resolve

NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)

FEED = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Newsroom</title><link>https://newsroom.example.org/</link>
<description>d</description>
<item>
  <title>Water talks in Chisinau</title>
  <link>https://newsroom.example.org/items/water</link>
  <guid isPermaLink="false">water-1</guid>
  <pubDate>Thu, 09 Oct 2025 10:30:00 +0000</pubDate>
  <category>Water management</category>
  <category>OSCE Mission to Moldova</category>
  <category>Press release</category>
  <category>Quarterly outlook</category>
</item>
</channel></rss>
"""


def test_a_category_without_a_domain_goes_to_the_facet_it_is_known_in_or_is_reported_unfiled(
        settings, session, tmp_path):
    resolve(session, "theme", ["Water management"], create=True)
    resolve(session, "content_type", ["Press release"], create=True)
    upsert_subscriber(session, "ann@example.org", smtputf8=False,
                      filters=[FilterSpec(content_types=["Press release"])])
    session.commit()
    feed = tmp_path / "feed.rss"
    feed.write_text(FEED, encoding="utf-8")

    report = ingest_feed(feed, now=NOW, settings=settings)
    item = session.scalars(select(Item)).one()
    assert [t.name for t in item.themes] == ["Water management"]
    # A place regions.json knows is a location, with its region; a type is the type.
    assert [loc.name for loc in item.locations] == ["OSCE Mission to Moldova"]
    assert item.locations[0].parent.name == "Eastern Europe"
    assert item.content_type.name == "Press release"
    # Known nowhere: reported with its item, and not created as a theme.
    assert report.unfiled == ["item 'Water talks in Chisinau': category 'Quarterly outlook' has "
                              "no domain and is not a known theme, location or content type; "
                              "left unfiled"]
    assert "1 category left unfiled" in report.summary()
    assert session.scalars(select(Theme.name)).all() == ["Water management"]


def test_known_facets_says_none_for_a_name_known_in_two_facets(session):
    resolve(session, "theme", ["Youth"], create=True)
    resolve(session, "location", ["Youth"], create=True)
    session.commit()
    known = known_facets(session)
    assert known["youth"] is None
    assert known["osce-mission-to-moldova"] == "location"  # from regions.json alone
