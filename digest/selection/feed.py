"""What a reader's personal feed carries: the newest items their filters match.

The same per-subscriber matcher as previews (``item_matches_subscriber``), so the feed and
the digest never disagree about what a reader wants. Archive backfill is left out, as it is
from every scheduled digest; the ledger is not consulted: the feed lists what matches,
whether or not it was mailed.
"""

from __future__ import annotations

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session, selectinload

from digest.models import Item
from digest.selection.matching import item_matches_subscriber


def feed_items(session: Session, subscriber_id: int, *, limit: int) -> list[Item]:
    """The ``limit`` newest items (by publishing date, else by arrival) the subscriber's
    filters match, with their themes, places and type loaded."""
    i = Item.__table__.c
    newest = func.coalesce(i.published_at, i.ingested_at)
    stmt = (
        select(Item)
        .where(~i.is_backfill, item_matches_subscriber(Item.__table__, literal(subscriber_id)))
        .order_by(newest.desc(), i.id.desc())
        .limit(limit)
        .options(selectinload(Item.themes), selectinload(Item.locations),
                 selectinload(Item.content_type))
    )
    return list(session.scalars(stmt))
