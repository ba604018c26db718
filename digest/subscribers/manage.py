"""Adding, updating, finding, leaving, suppressing and erasing subscribers.

A reader's status and the suppression list are ``digest.records.suppressions``'s (the rule:
a suppressed status has a suppression row); the names here take an address in any form,
canonicalise it (``lookup_form``) and call down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from digest.db import insert_ignoring_conflict, rowcount
from digest.errors import ValidationError
from digest.models import (
    Bounce,
    Complaint,
    Delivery,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)
from digest.records import suppressions
from digest.records.suppressions import set_status
from digest.subscribers.filters import FilterSpec, build_filters
from digest.subscribers.validate import (
    canonical_email,
    check_choice,
    check_hour,
    check_timezone,
    check_weekday,
    lookup_form,
)

# What a new subscriber gets for a field nobody gave; an existing one keeps its own.
NEW_SUBSCRIBER_DEFAULTS: dict[str, Any] = {
    "frequency": Frequency.weekly.value, "timezone": "UTC", "weekday": 0, "hour": 8,
    "group_by": "theme",
}


def upsert_subscriber(
    session: Session,
    email: str,
    *,
    smtputf8: bool,
    filters: list[FilterSpec] | None = None,
    frequency: str | None = None,
    timezone: str | None = None,
    weekday: int | str | None = None,
    hour: int | str | None = None,
    status: str | None = None,
    group_by: str | None = None,
    create_taxonomy: bool = False,
    suppression_detail: str = "",
    lift_suppression: bool = False,
) -> tuple[Subscriber, bool]:
    """Add a subscriber or update the one with that address. Returns (subscriber, created).

    A field given as None is left as it is on an existing subscriber, and gets its default
    (``NEW_SUBSCRIBER_DEFAULTS``; status ``active``) on a new one; ``filters=None`` keeps
    the filters, ``[]`` means everything. A status change goes through ``set_status``, which
    refuses to make a suppressed address active or pending (rule R2) and lists the address
    when the status is ``suppressed`` (``suppression_detail`` says why; rule R3).
    ``lift_suppression``: an operator named this status for this one reader (rule R5), so a
    status other than ``suppressed`` takes the address off the suppression list first.

    Everything is validated before anything is written; unknown themes, locations or types
    raise ``UnknownTaxonomyError`` unless ``create_taxonomy``. ``smtputf8`` (the
    DIGEST_SMTPUTF8 setting) says whether a non-ASCII local part is accepted.
    """
    address = canonical_email(email, smtputf8=smtputf8)
    fields = _checked_fields(frequency=frequency, timezone=timezone, weekday=weekday, hour=hour,
                             group_by=group_by)
    if status is not None:
        check_choice("status", status, [s.value for s in SubscriberStatus])
    built = None if filters is None else build_filters(session, filters, create_taxonomy)

    sub_id, created = _write_row(session, address, fields,
                                 status or SubscriberStatus.active.value)
    # Read after our write: the row is ours until commit, so its filters cannot change
    # under us (populate_existing: a copy the caller loaded earlier is refreshed).
    sub = session.scalars(
        select(Subscriber).where(Subscriber.id == sub_id)
        .options(selectinload(Subscriber.filters))
        .execution_options(populate_existing=True)
    ).one()
    wanted = status or sub.status
    if lift_suppression and wanted != SubscriberStatus.suppressed:
        suppressions.unsuppress(session, address)  # the same object as ``sub``: its status follows
    if created or sub.status != wanted:
        set_status(session, sub, wanted, detail=suppression_detail)
    if built is not None:
        sub.filters = built
    session.flush()
    return sub, created


def _checked_fields(**given: Any) -> dict[str, Any]:
    """The fields given (not None), validated; nothing is written before all are good."""
    checks: dict[str, Any] = {
        "frequency": lambda v: check_choice("frequency", v, [f.value for f in Frequency]),
        "timezone": check_timezone,
        "weekday": check_weekday,
        "hour": check_hour,
        "group_by": lambda v: check_choice("group_by", v, ["theme", "location"]),
    }
    return {name: checks[name](value) for name, value in given.items() if value is not None}


def _write_row(session: Session, address: str, fields: dict, status: str) -> tuple[int, bool]:
    """Update the address's row with ``fields``, or insert it with them (defaults for the
    rest) and ``status``; (id, created).

    Two requests for one new address at the same moment (a double click, a sign-up during an
    import) both find no row; a plain INSERT would fail the second one on the unique email.
    Here the second one's INSERT ... ON CONFLICT DO NOTHING inserts nothing and it updates
    the first one's row instead. Writing first also locks the row (PostgreSQL) or the
    database (SQLite) until commit, so concurrent changes of one subscriber go one by one
    (with no field to change, the address is written over itself to take the lock).
    """
    for _attempt in range(3):
        sub_id = session.execute(
            update(Subscriber).where(Subscriber.email == address)
            .values(**(fields or {"email": address}))
            .returning(Subscriber.id).execution_options(synchronize_session=False)
        ).scalar()
        if sub_id is not None:
            return sub_id, False
        sub_id = session.execute(
            insert_ignoring_conflict(
                session, Subscriber,
                {"email": address, "status": status, "created_at": utcnow(),
                 **NEW_SUBSCRIBER_DEFAULTS, **fields},
                ["email"],
            ).returning(Subscriber.id)
        ).scalar()
        if sub_id is not None:
            return sub_id, True
        # Inserted by another transaction after our UPDATE looked: update that row.
    raise ValidationError(
        f"the subscriber {address} was changed by other requests at the same time; try again"
    )


def suppression_of(session: Session, email: str) -> Suppression | None:
    """The address's entry on the suppression list, if it has one (any form of it)."""
    return suppressions.suppression_of(session, lookup_form(email))


def purge_unconfirmed(session: Session, older_than: timedelta = timedelta(days=8),
                      now: datetime | None = None) -> int:
    """Forget addresses that asked to subscribe and never confirmed (their link has expired).

    Keeping them would keep personal data nobody consented to; they can simply ask again.
    """
    cutoff = (now or utcnow()) - older_than
    return rowcount(session, delete(Subscriber).where(
        Subscriber.status == SubscriberStatus.pending, Subscriber.created_at < cutoff))


def find_subscriber(session: Session, email: str) -> Subscriber:
    """The subscriber with this address (any capitals), or ValidationError saying so."""
    address = lookup_form(email)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is None:
        raise ValidationError(f"no subscriber {address}; see 'digest subscribers list'")
    return sub


@dataclass(frozen=True)
class Erased:
    email: str
    deliveries: int
    bounces: int
    suppression_kept: bool


def erase_subscriber(session: Session, sub: Subscriber) -> Erased:
    """The right to erasure: the subscriber, their filters, their delivery log (and with it
    the ledger of what they were sent) and the bounce and complaint reports about them are
    deleted (``bounces`` counts both).

    A suppression entry is kept on purpose: it is what stops the address from ever being
    mailed again (a later import, a bounce that arrives late); ``unsuppress`` removes it.
    """
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == sub.id)
    deliveries = session.scalar(select(func.count()).select_from(delivery_ids.subquery())) or 0
    bounces = rowcount(session, delete(Bounce).where(
        or_(Bounce.email == sub.email, Bounce.delivery_id.in_(delivery_ids))))
    bounces += rowcount(session, delete(Complaint).where(
        or_(Complaint.email == sub.email, Complaint.delivery_id.in_(delivery_ids))))
    # Deliveries, the ledger and delivery items go by the foreign keys' ON DELETE CASCADE.
    session.execute(delete(Delivery).where(Delivery.subscriber_id == sub.id))
    kept = bool(session.scalar(select(func.count()).where(Suppression.email == sub.email)))
    email = sub.email
    session.delete(sub)
    session.flush()
    return Erased(email, deliveries, bounces, kept)


def unsubscribe(session: Session, sub: Subscriber) -> None:
    set_status(session, sub, SubscriberStatus.unsubscribed)


def suppress(session: Session, email: str, reason: SuppressionReason,
             detail: str = "") -> Suppression:
    """Put an address (any form of it) on the suppression list and stop its subscriber's
    pending mail (``digest.records.suppressions.suppress``)."""
    return suppressions.suppress(session, lookup_form(email), reason, detail)


def unsuppress(session: Session, email: str) -> bool:
    """Lift the suppression of an address (any form of it); False if it had none."""
    return suppressions.unsuppress(session, lookup_form(email))
