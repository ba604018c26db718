"""What the ledger used to hold, read from the deliveries (ADR 0030): the claim of each
(reader, item), held by the earliest claiming delivery that is not cancelled, and what a
delivery carries without holding its claim. Tests read these instead of tables."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Delivery
from digest.records.contents import CLAIM_RELEASED


@dataclass(frozen=True, order=True)
class Claim:
    subscriber_id: int
    item_id: int
    delivery_id: int


def claims(session: Session) -> list[Claim]:
    """Every (reader, item) that is the reader's, with the delivery that claimed it first."""
    session.flush()
    first: dict[tuple[int, int], int] = {}
    rows = session.execute(select(Delivery.id, Delivery.subscriber_id, Delivery.item_ids)
                           .where(Delivery.claims.is_(True),
                                  Delivery.status.not_in(CLAIM_RELEASED))
                           .order_by(Delivery.id)).all()
    for delivery_id, subscriber_id, item_ids in rows:
        for item_id in item_ids or []:
            first.setdefault((subscriber_id, item_id), delivery_id)
    return sorted(Claim(s, i, d) for (s, i), d in first.items())


def carried(session: Session, delivery_id: int) -> list[int]:
    """The item ids one delivery carries."""
    session.flush()
    return list(session.scalar(select(Delivery.item_ids).where(Delivery.id == delivery_id))
                or [])


def carried_unclaimed(session: Session, delivery_id: int) -> list[int]:
    """What the delivery carries without holding the claim (what ``delivery_items`` held)."""
    held = {c.item_id for c in claims(session) if c.delivery_id == delivery_id}
    return [i for i in carried(session, delivery_id) if i not in held]
