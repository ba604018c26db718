"""What each delivery carries."""

from __future__ import annotations

from sqlalchemy import Subquery, select, union_all

from digest.models import SentItem, delivery_items


def delivery_contents() -> Subquery:
    """``(delivery_id, item_id)`` for what each delivery carries, each pair once.

    A pair is in one of the two tables, never both: in the ledger (``sent_items``, written when
    the run is planned) when that delivery claimed the item for its reader (digests, alerts,
    ad-hoc sends: rule H3), else in ``delivery_items`` (dry runs, resends of failed messages,
    ad-hoc sends made with "also include in digests", and an ad-hoc send's repeats of items
    the reader already had). One delivery may have rows in both: an ad-hoc send that claimed
    some items and repeated others. A claim given back when a run is cancelled leaves the
    cancelled delivery without that row."""
    return union_all(
        select(delivery_items.c.delivery_id, delivery_items.c.item_id),
        select(SentItem.delivery_id, SentItem.item_id),
    ).subquery("delivery_contents")
