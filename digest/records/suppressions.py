"""Suppression and a reader's status: the rule "a suppressed status has a suppression row".

``set_status`` is the one place a reader's status changes, with what has to change along
with it (the suppression list, cancelling planned rows, releasing claims). Every function
here takes addresses in their stored form (``digest.addresses.canonical_email``): the
delivery's ``email`` column, a subscriber's; ``digest.subscribers`` canonicalises what a
reader or an operator typed and calls down.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import ValidationError
from digest.models import Subscriber, SubscriberStatus, Suppression, SuppressionReason, utcnow
from digest.records import states

LEFT = (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed)
RECEIVING = (SubscriberStatus.active, SubscriberStatus.pending)


def suppression_of(session: Session, address: str) -> Suppression | None:
    """The (stored-form) address's entry on the suppression list, if it has one."""
    return session.scalars(
        select(Suppression).where(Suppression.email == address)).one_or_none()


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
                states.release_cancelled_claims(session, sub.id)
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
    return states.cancel_for_subscriber(
        session, subscriber_id, "cancelled: subscriber left or was suppressed")


def suppress(session: Session, address: str, reason: SuppressionReason,
             detail: str = "") -> Suppression:
    """Put a (stored-form) address on the suppression list and stop its subscriber's pending
    mail."""
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status != SubscriberStatus.suppressed:
        set_status(session, sub, SubscriberStatus.suppressed, reason=reason, detail=detail)
    row = suppression_of(session, address) or _add_to_list(session, address, reason, detail)
    session.flush()
    return row


def unsuppress(session: Session, address: str) -> bool:
    """Take a (stored-form) address off the suppression list, its reader given back the status
    they had before; False if it was not listed."""
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


