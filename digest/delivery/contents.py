"""What each delivery carries."""

from __future__ import annotations

from sqlalchemy import Subquery, select, union_all

from digest.models import SentItem, delivery_items


def delivery_contents() -> Subquery:
    """``(delivery_id, item_id)`` for what each delivery carries. Scheduled digests and alerts
    keep it in the ledger (``sent_items``, written once when planned); ad-hoc sends and dry
    runs, which claim nothing, in ``delivery_items``. A delivery has rows in one of the two."""
    return union_all(
        select(delivery_items.c.delivery_id, delivery_items.c.item_id),
        select(SentItem.delivery_id, SentItem.item_id),
    ).subquery("delivery_contents")
