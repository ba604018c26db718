"""Rendering items loaded from the database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

from digest.render import (
    EmailRenderer,
    RenderItem,
    render_items_from_models,
)
from tests.factories import recipient

# --- from the database -------------------------------------------------------------------------

def test_render_items_from_models_reads_loaded_items(session, settings):
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from digest.models import ContentType, Item, Location, Theme

    item = Item(guid="g-1", url=None, title="From the database", summary="Stored <i>summary</i>",
                published_at=datetime(2025, 10, 8, 9, tzinfo=UTC),
                content_type=ContentType(slug="news", name="News"),
                themes=[Theme(slug="policing", name="Policing"), Theme(slug="youth", name="Youth")],
                locations=[Location(slug="serbia", name="OSCE Mission to Serbia")])
    session.add(item)
    session.commit()
    session.expunge_all()
    loaded = session.scalars(select(Item).options(
        selectinload(Item.themes), selectinload(Item.locations),
        selectinload(Item.content_type))).all()
    [converted] = render_items_from_models(loaded)
    assert converted == RenderItem(
        id=loaded[0].id, title="From the database", url=None, summary="Stored <i>summary</i>",
        published_at=datetime(2025, 10, 8, 9, tzinfo=UTC), content_type="News",
        themes=("Policing", "Youth"), locations=("OSCE Mission to Serbia",))
    email = EmailRenderer("digest", settings).render(recipient(), [converted])
    assert "Stored summary" in email.text
    assert settings.newsroom_url in email.text
