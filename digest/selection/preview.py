"""What a reader would get, read-only: the next digest's items, or the items of a period.

Both use the per-subscriber matcher (``item_matches_subscriber``), the one that planning's
join is proven equal to, so a preview shows what planning would pick.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from digest.models import Item, Subscriber, utcnow
from digest.records.contents import is_claimed
from digest.selection.matching import item_matches_subscriber, window_for
from digest.settings import Settings


def preview_items(session: Session, subscriber: Subscriber, *, as_of: datetime | None = None,
                  since: datetime | None = None, settings: Settings) -> list[Item]:
    """What the subscriber's next scheduled digest would carry at ``as_of``; writes nothing."""
    as_of = as_of or utcnow()
    window = window_for(as_of, settings)
    start = since or subscriber.watermark or window.default_start
    i = Item.__table__.c
    stmt = (
        select(Item)
        .where(i.ingested_at > start, i.ingested_at <= as_of, ~i.is_backfill,
               item_matches_subscriber(Item.__table__, literal(subscriber.id)),
               ~is_claimed(session, subscriber.id, i.id))
        .order_by(Item.published_at.desc().nullslast(), Item.id)
    )
    return list(session.scalars(stmt))


def matching_items(session: Session, subscriber_id: int, *, since: datetime,
                   until: datetime | None = None) -> list[Item]:
    """Items published in [since, until] that the subscriber's filters match (claims ignored)."""
    i = Item.__table__.c
    conds = [func.coalesce(i.published_at, i.ingested_at) >= since,
             item_matches_subscriber(Item.__table__, literal(subscriber_id))]
    if until is not None:
        conds.append(func.coalesce(i.published_at, i.ingested_at) <= until)
    newest_first = Item.published_at.desc().nullslast()
    return list(session.scalars(select(Item).where(*conds).order_by(newest_first)))
