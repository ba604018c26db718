"""What each delivery carries, and which items are already a reader's (their claims).

A delivery row carries its item ids (``deliveries.item_ids``: an ``INTEGER[]`` on PostgreSQL,
a JSON array on SQLite; ADR 0030), so a run writes one row per reader whatever the number of
items. With ``claims`` those items are the reader's for good while the row is not
``cancelled``: no digest or alert carries them to that reader again (rules N1, H3). This
module is the one that reads the arrays as (delivery, item) pairs; the statements are
per dialect (``unnest`` / ``json_each``), the rest of the code sees plain subqueries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Integer,
    Select,
    Subquery,
    and_,
    exists,
    func,
    literal,
    select,
    true,
    type_coerce,
)
from sqlalchemy.orm import Session

from digest.models import Delivery, DeliveryStatus


def _dialect(session: Session | str) -> str:
    return session if isinstance(session, str) else session.get_bind().dialect.name


def _elements(dialect: str, item_ids: ColumnElement[list[int]], name: str) -> FromClause:
    """A table-valued FROM of the ids in ``item_ids`` (one column, ``value``)."""
    if dialect == "postgresql":
        return func.unnest(item_ids).table_valued("value").render_derived(name=name)
    return func.json_each(item_ids).table_valued("value").alias(name)


def _pairs(dialect: str, *conditions: ColumnElement[bool]) -> Select[tuple[int, int, int]]:
    d = Delivery.__table__
    elements = _elements(dialect, d.c.item_ids, "carried")
    return (select(d.c.id.label("delivery_id"),
                   type_coerce(elements.c.value, Integer).label("item_id"),
                   d.c.subscriber_id)
            .select_from(d.join(elements, true()))
            .where(*conditions))


def delivery_contents(session: Session | str, *conditions: ColumnElement[bool]) -> Subquery:
    """``(delivery_id, item_id, subscriber_id)`` for what each delivery carries (of those
    ``conditions`` on ``deliveries`` accept), each pair once. Filter it by delivery (the
    conditions, or a WHERE on ``delivery_id``): unfiltered it reads every delivery's array."""
    return _pairs(_dialect(session), *conditions).subquery("delivery_contents")


CLAIM_RELEASED = (DeliveryStatus.cancelled,)


def claiming(d: Any = None) -> ColumnElement[bool]:
    """On a deliveries row (the table, an alias of it, or an aliased ``Delivery``): its items
    are its reader's (it claims, and is not cancelled)."""
    c = Delivery if d is None else (d.c if hasattr(d, "c") else d)
    return and_(c.claims.is_(True), c.status.not_in(CLAIM_RELEASED))


def claimed_pairs(session: Session | str, *, newer_than: ColumnElement[datetime] | None = None,
                  subscribers: ColumnElement[bool] | None = None) -> Subquery:
    """``(subscriber_id, item_id, delivery_id)``: the items that are already each reader's.

    ``newer_than`` (a bound on ``deliveries.newest_item_at``): only rows carrying an item
    ingested after it, which are the only ones that can hold an item of a window starting
    there (the row of the reader's last digest ends at the watermark). ``subscribers``: a
    condition on ``deliveries.subscriber_id``."""
    d = Delivery.__table__
    conditions = [claiming()]
    if newer_than is not None:
        conditions.append(d.c.newest_item_at > newer_than)
    if subscribers is not None:
        conditions.append(subscribers)
    return _pairs(_dialect(session), *conditions).subquery("claimed")


def is_claimed(session: Session | str, subscriber_id: ColumnElement[int] | int,
               item_id: ColumnElement[int] | int) -> ColumnElement[bool]:
    """SQL condition: one of the reader's claiming deliveries carries the item."""
    d = Delivery.__table__
    dialect = _dialect(session)
    item = item_id if isinstance(item_id, ColumnElement) else literal(item_id)
    carried: ColumnElement[bool]
    if dialect == "postgresql":
        carried = item == func.any(d.c.item_ids)
    else:
        elements = _elements(dialect, d.c.item_ids, "carried_one")
        carried = exists().select_from(elements).where(
            type_coerce(elements.c.value, Integer) == item).correlate_except(elements)
    return exists().where(d.c.subscriber_id == subscriber_id, claiming(), carried
                          ).correlate_except(d)


def items_of(session: Session, delivery_id: int) -> list[int]:
    """The item ids one delivery carries."""
    return list(session.scalar(select(Delivery.item_ids).where(Delivery.id == delivery_id))
                or [])
