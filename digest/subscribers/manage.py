"""Adding, updating, finding, leaving, suppressing and erasing subscribers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from digest.db import insert_ignoring_conflict, rowcount
from digest.delivery import states as delivery_states
from digest.errors import ValidationError
from digest.models import (
    Bounce,
    Delivery,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)
from digest.subscribers.filters import FilterSpec, build_filters
from digest.subscribers.validate import (
    canonical_email,
    check_choice,
    check_hour,
    check_timezone,
    check_weekday,
    lookup_form,
)


def upsert_subscriber(
    session: Session,
    email: str,
    *,
    smtputf8: bool,
    filters: list[FilterSpec] | None = None,
    frequency: str = Frequency.weekly,
    timezone: str = "UTC",
    weekday: int | str = 0,
    hour: int | str = 8,
    status: str = SubscriberStatus.active,
    group_by: str = "theme",
    create_taxonomy: bool = False,
) -> tuple[Subscriber, bool]:
    """Add a subscriber or update the one with that address. Returns (subscriber, created).

    Everything is validated before anything is written; unknown themes, locations or types
    raise ``UnknownTaxonomyError`` unless ``create_taxonomy``. ``smtputf8`` (the
    DIGEST_SMTPUTF8 setting) says whether a non-ASCII local part is accepted.
    """
    address = canonical_email(email, smtputf8=smtputf8)
    check_choice("frequency", frequency, [f.value for f in Frequency])
    check_choice("status", status, [s.value for s in SubscriberStatus])
    check_choice("group_by", group_by, ["theme", "location"])
    check_timezone(timezone)
    weekday, hour = check_weekday(weekday), check_hour(hour)
    built = build_filters(session, filters or [], create_taxonomy)

    fields = {"frequency": frequency, "timezone": timezone, "weekday": weekday, "hour": hour,
              "group_by": group_by}
    sub_id, created = _write_row(session, address, fields, status)
    # Read after our write: the row is ours until commit, so its filters cannot change
    # under us (populate_existing: a copy the caller loaded earlier is refreshed).
    sub = session.scalars(
        select(Subscriber).where(Subscriber.id == sub_id)
        .options(selectinload(Subscriber.filters))
        .execution_options(populate_existing=True)
    ).one()
    if created or sub.status != status:
        set_status(session, sub, status)
    sub.filters = built
    session.flush()
    return sub, created


def _write_row(session: Session, address: str, fields: dict, status: str) -> tuple[int, bool]:
    """Update the address's row, or insert it; (id, created).

    Two requests for one new address at the same moment (a double click, a sign-up during an
    import) both find no row; a plain INSERT would fail the second one on the unique email.
    Here the second one's INSERT ... ON CONFLICT DO NOTHING inserts nothing and it updates
    the first one's row instead. Writing first also locks the row (PostgreSQL) or the
    database (SQLite) until commit, so concurrent changes of one subscriber go one by one.
    """
    for _attempt in range(3):
        sub_id = session.execute(
            update(Subscriber).where(Subscriber.email == address).values(**fields)
            .returning(Subscriber.id).execution_options(synchronize_session=False)
        ).scalar()
        if sub_id is not None:
            return sub_id, False
        sub_id = session.execute(
            insert_ignoring_conflict(
                session, Subscriber,
                {"email": address, "status": status, "created_at": utcnow(), **fields},
                ["email"],
            ).returning(Subscriber.id)
        ).scalar()
        if sub_id is not None:
            return sub_id, True
        # Inserted by another transaction after our UPDATE looked: update that row.
    raise ValidationError(
        f"the subscriber {address} was changed by other requests at the same time; try again"
    )


def set_status(session: Session, sub: Subscriber, status: str) -> None:
    now = utcnow()
    sub.status = SubscriberStatus(status)
    if status == SubscriberStatus.active:
        sub.confirmed_at = sub.confirmed_at or now
        sub.unsubscribed_at = None
    elif status in (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed):
        sub.unsubscribed_at = sub.unsubscribed_at or now
        if sub.id is not None:
            cancel_planned(session, sub.id)


def cancel_planned(session: Session, subscriber_id: int) -> int:
    """Deliveries planned but not sent yet to this subscriber will not go out."""
    return delivery_states.cancel_for_subscriber(
        session, subscriber_id, "cancelled: subscriber left or was suppressed")


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
    the ledger of what they were sent) and the bounce reports about them are deleted.

    A suppression entry is kept on purpose: it is what stops the address from ever being
    mailed again (a later import, a bounce that arrives late); ``unsuppress`` removes it.
    """
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == sub.id)
    deliveries = session.scalar(select(func.count()).select_from(delivery_ids.subquery())) or 0
    bounces = rowcount(session, delete(Bounce).where(
        or_(Bounce.email == sub.email, Bounce.delivery_id.in_(delivery_ids))))
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
    """Put an address on the suppression list and stop its subscriber's pending mail."""
    address = lookup_form(email)
    row = session.scalars(select(Suppression).where(Suppression.email == address)).one_or_none()
    if row is None:
        row = Suppression(email=address, reason=reason, detail=detail, created_at=utcnow())
        session.add(row)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status != SubscriberStatus.suppressed:
        set_status(session, sub, SubscriberStatus.suppressed)
    session.flush()
    return row


def unsuppress(session: Session, email: str) -> bool:
    address = lookup_form(email)
    row = session.scalars(select(Suppression).where(Suppression.email == address)).one_or_none()
    if row is None:
        return False
    session.delete(row)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status == SubscriberStatus.suppressed:
        set_status(session, sub, SubscriberStatus.active)
    session.flush()
    return True


