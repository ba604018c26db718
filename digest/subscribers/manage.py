"""Adding, updating, finding, leaving, suppressing and erasing subscribers."""

from __future__ import annotations

from collections.abc import Collection
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
from digest.records import states as delivery_states
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
        unsuppress(session, address)  # the same object as ``sub``: its status follows
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


LEFT = (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed)
RECEIVING = (SubscriberStatus.active, SubscriberStatus.pending)


def suppression_of(session: Session, email: str) -> Suppression | None:
    """The address's entry on the suppression list, if it has one."""
    return session.scalars(
        select(Suppression).where(Suppression.email == lookup_form(email))).one_or_none()


def _listed_words(row: Suppression) -> str:
    return f"is on the suppression list ({row.reason}{': ' + row.detail if row.detail else ''})"


@dataclass(frozen=True)
class Left:
    """Why nothing but the reader's own act or an operator's explicit one may bring an address
    back to receiving mail (rules I2, R5)."""

    reason: str  # in words: "ann@example.org unsubscribed on 2025-10-01"
    reader_left: bool  # its reader's own status is unsubscribed or suppressed


_IN_CHUNK = 500  # addresses per IN (...) query


def who_left(session: Session, addresses: Collection[str]) -> dict[str, Left]:
    """Of these (stored-form) addresses, those on the suppression list or whose reader
    unsubscribed or was suppressed, with why; two queries per 500 addresses."""
    wanted = sorted(set(addresses))
    left: dict[str, Left] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start:start + _IN_CHUNK]
        for email, status, since in session.execute(
                select(Subscriber.email, Subscriber.status, Subscriber.unsubscribed_at)
                .where(Subscriber.email.in_(chunk), Subscriber.status.in_(LEFT))):
            what = "unsubscribed" if status is SubscriberStatus.unsubscribed else "was suppressed"
            when = f" on {since:%Y-%m-%d}" if since else ""
            left[email] = Left(f"{email} {what}{when}", reader_left=True)
        for row in session.scalars(select(Suppression).where(Suppression.email.in_(chunk))):
            # The list's words beat the status's: they say why.
            left[row.email] = Left(f"{row.email} {_listed_words(row)}",
                                   reader_left=row.email in left)
    return left


def set_status(session: Session, sub: Subscriber, status: str, *,
               reason: SuppressionReason = SuppressionReason.admin,
               detail: str = "") -> None:
    """The one place a reader's status changes, with what has to change along with it.

    - ``suppressed`` puts the address on the suppression list (``reason``, ``detail``) if it
      is not there yet: status and list never disagree (rule R3).
    - An address on the list is never made ``active`` or ``pending`` here (rule R2):
      ``ValidationError`` says to lift the suppression first (``unsuppress``). Leaving it
      (``unsubscribed``) keeps it ``suppressed``, the stronger of the two.
    - Leaving cancels what was planned for them and not sent (rule R4).
    - Becoming active after anything else (having left, or pending after leaving) starts
      afresh: the watermark is cleared, so the next digest looks back like a new reader's
      (rule R6); the ledger still keeps them from getting an item twice.
    """
    target = SubscriberStatus(status)
    before = sub.status
    listed = suppression_of(session, sub.email)
    if listed is not None and target in RECEIVING:
        raise ValidationError(
            f"{sub.email} {_listed_words(listed)}, so nothing may be sent to it; an operator "
            f"can lift that first ('digest subscribers unsuppress {sub.email}', or Unsuppress "
            "in the admin)")
    if listed is not None and target is SubscriberStatus.unsubscribed:
        target = SubscriberStatus.suppressed
    if target is SubscriberStatus.suppressed and listed is None:
        _add_to_list(session, sub.email, reason, detail)
    if target is SubscriberStatus.suppressed:
        # What lifting the suppression gives back; a suppressed reader who asks to leave
        # is given back as unsubscribed (rule R5: only their own act subscribes them).
        if before is not SubscriberStatus.suppressed:
            sub.status_before_suppression = before
        elif status == SubscriberStatus.unsubscribed:
            sub.status_before_suppression = SubscriberStatus.unsubscribed
    now = utcnow()
    sub.status = target
    if target is SubscriberStatus.active:
        sub.confirmed_at = sub.confirmed_at or now
        sub.unsubscribed_at = None
        if before is not SubscriberStatus.active:
            sub.watermark = None
            if sub.id is not None:
                delivery_states.release_cancelled_claims(session, sub.id)
    elif target in LEFT:
        sub.unsubscribed_at = sub.unsubscribed_at or now
        if sub.id is not None:
            cancel_planned(session, sub.id)


def _add_to_list(session: Session, address: str, reason: SuppressionReason,
                 detail: str) -> Suppression:
    row = Suppression(email=address, reason=reason, detail=detail, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


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
    """Put an address on the suppression list and stop its subscriber's pending mail."""
    address = lookup_form(email)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status != SubscriberStatus.suppressed:
        set_status(session, sub, SubscriberStatus.suppressed, reason=reason, detail=detail)
    row = suppression_of(session, address) or _add_to_list(session, address, reason, detail)
    session.flush()
    return row


def unsuppress(session: Session, email: str) -> bool:
    address = lookup_form(email)
    row = session.scalars(select(Suppression).where(Suppression.email == address)).one_or_none()
    if row is None:
        return False
    session.delete(row)
    session.flush()  # gone before set_status looks (a session may not autoflush: sqladmin's)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status == SubscriberStatus.suppressed:
        # The status they had before (rule R5): a pending reader stays pending, one who asked
        # to leave stays unsubscribed; readers suppressed before that was kept come back.
        set_status(session, sub, sub.status_before_suppression or SubscriberStatus.active)
        sub.status_before_suppression = None
    session.flush()
    return True


