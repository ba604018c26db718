"""The review list on SQLite and PostgreSQL: a feed category without a domain that no facet
knows is kept (seen count, when, where) with the items that carried it; filing it tags them and
later feeds file it by themselves; dismissing drops it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from digest.errors import NotFoundError
from digest.ingest import ingest_feed
from digest.models import Item, TermReview, Theme
from digest.taxonomy import resolve
from digest.taxonomy_edit import dismiss_review, file_review, review_list

NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)


def feed(*entries: tuple[str, str]) -> str:
    """An RSS feed; each entry (guid, its one domain-less category)."""
    body = "".join(
        f"<item><title>Item {guid}</title><link>https://newsroom.example.org/{guid}</link>"
        f"<guid isPermaLink=\"false\">{guid}</guid>"
        f"<pubDate>Thu, 09 Oct 2025 10:30:00 +0000</pubDate>"
        f"<category>{category}</category></item>" for guid, category in entries)
    return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            "<title>Newsroom</title><link>https://newsroom.example.org/</link>"
            f"<description>d</description>{body}</channel></rss>")


def ingest(tmp_path, settings, text: str, now: datetime = NOW):
    path = tmp_path / "feed.rss"
    path.write_text(text, encoding="utf-8")
    return ingest_feed(path, now=now, settings=settings)


def test_an_unknown_category_waits_on_the_review_list_with_its_items_and_filing_tags_them(
        settings, session, tmp_path):
    ingest(tmp_path, settings, feed(("one", "Quarterly outlook"), ("two", "quarterly OUTLOOK"),
                                    ("three", "Field notes")))
    ingest(tmp_path, settings, feed(("four", "Quarterly outlook")), now=NOW + timedelta(hours=1))
    waiting = {r.slug: r for r in review_list(session)}
    assert set(waiting) == {"quarterly-outlook", "field-notes"}
    outlook = waiting["quarterly-outlook"]
    assert (outlook.seen_count, outlook.items) == (2, 3)  # two ingests, three items
    assert outlook.last_seen_at == NOW + timedelta(hours=1)
    assert "not a known theme, location or content type" in outlook.reason
    assert outlook.source  # where it was last seen
    assert session.scalars(select(Theme)).all() == []  # never a theme by default

    filed = file_review(session, "Quarterly outlook", "content_type")
    session.commit()
    assert filed.items == 3
    tagged = session.scalars(select(Item.title).where(Item.content_type_id == filed.term.id))
    assert sorted(tagged) == ["Item four", "Item one", "Item two"]
    assert [r.slug for r in review_list(session)] == ["field-notes"]

    # Now a known name: the next feed files it by itself, and nothing new waits.
    ingest(tmp_path, settings, feed(("five", "Quarterly outlook")), now=NOW + timedelta(hours=2))
    five = session.scalars(select(Item).where(Item.guid == "five")).one()
    assert five.content_type is not None and five.content_type.name == "Quarterly outlook"
    assert [r.slug for r in review_list(session)] == ["field-notes"]


def test_filing_as_a_theme_tags_items_once_and_dismissing_removes_the_row(
        settings, session, tmp_path):
    ingest(tmp_path, settings, feed(("one", "Field notes"), ("two", "Field notes")))
    ingest(tmp_path, settings, feed(("one", "Field notes")))  # the same item again
    assert review_list(session)[0].items == 2
    filed = file_review(session, "field-notes", "theme")  # by slug too
    session.commit()
    assert filed.items == 2
    assert all([t.name for t in i.themes] == ["Field notes"]
               for i in session.scalars(select(Item)))

    ingest(tmp_path, settings, feed(("six", "Odd tag")))
    dismiss_review(session, "Odd tag")
    session.commit()
    assert session.scalars(select(TermReview)).all() == []
    with pytest.raises(NotFoundError, match="not on the review list"):
        dismiss_review(session, "Odd tag")


def test_filing_as_a_content_type_keeps_the_type_an_item_has_and_names_it(
        settings, session, tmp_path):
    ingest(tmp_path, settings, feed(("one", "Field notes"), ("two", "Field notes")))
    two = session.scalars(select(Item).where(Item.guid == "two")).one()
    two.content_type = resolve(session, "content_type", ["News"], create=True)[0]
    session.commit()
    filed = file_review(session, "Field notes", "content_type")
    session.commit()
    assert (filed.items, filed.kept_own_type) == (1, [two.id])
    session.refresh(two)
    assert two.content_type.name == "News"
