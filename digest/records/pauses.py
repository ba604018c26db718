"""Recipient domains paused after a policy refusal (5.7.x: a block list, a reputation filter).

A policy refusal is about us, not the address: the address is kept, and the recipient's
domain is paused (``domain_pauses``) for ``policy_pause_minutes``, so the rest of the batch
and later batches do not knock again on a receiver that blocks us.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from digest.db import rowcount
from digest.errors import ConfigError
from digest.models import Delivery, DeliveryStatus, DomainPause, utcnow


def recipient_domain(email: str) -> str:
    """The key of a domain pause: the part after the last '@', lower-case, as stored."""
    return email.strip().rpartition("@")[2].strip().rstrip(".").lower()


@dataclass(frozen=True)
class Pause:
    until: datetime
    reason: str


def active_pauses(session: Session, domains: set[str], now: datetime) -> dict[str, Pause]:
    """The domains among ``domains`` paused at ``now``: one query for a whole batch."""
    if not domains:
        return {}
    rows = session.execute(
        select(DomainPause.domain, DomainPause.paused_until, DomainPause.reason)
        .where(DomainPause.domain.in_(domains), DomainPause.paused_until > now))
    return {domain: Pause(until, reason) for domain, until, reason in rows}


def pause_domain(session: Session, domain: str, until: datetime, reason: str, *,
                 delivery_id: int | None = None, now: datetime | None = None) -> datetime:
    """Pause ``domain`` until ``until`` (a pause already running longer is kept); returns
    when the pause ends. One upsert, so two workers refused at once leave one row."""
    now = now or utcnow()
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise ConfigError(f"domain pauses need PostgreSQL or SQLite, not {dialect}")
    table = cast(Table, DomainPause.__table__)
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(
        domain=recipient_domain(domain), paused_until=until, reason=reason, created_at=now,
        delivery_id=delivery_id)
    new = stmt.excluded
    upsert = stmt.on_conflict_do_update(index_elements=[table.c.domain], set_={
        "paused_until": case((table.c.paused_until > new.paused_until, table.c.paused_until),
                             else_=new.paused_until),
        "reason": new.reason,
        "delivery_id": new.delivery_id,
        # A pause that had run out is over: this one starts now.
        "created_at": case((table.c.paused_until <= now, new.created_at),
                           else_=table.c.created_at),
    }).returning(table.c.paused_until)
    paused_until: datetime = session.execute(upsert).scalar_one()
    return paused_until


def _domain_forms(domain: str) -> list[str]:
    """The key of ``domain`` and its other IDNA form (xn--... or Unicode), if it has one."""
    key = recipient_domain(domain)
    forms = [key]
    try:
        other = key.encode("idna").decode("ascii") if not key.isascii() else (
            key.encode("ascii").decode("idna") if "xn--" in key else key)
    except UnicodeError:
        other = key
    if other.lower() != key:
        forms.append(other.lower())
    return forms


def resume_domain(session: Session, domain: str,
                  now: datetime | None = None) -> tuple[str, int] | None:
    """Lift a domain's pause now (the caller commits). Its deliveries that were waiting for
    the pause become due now, for the retry task to send. Returns (the domain as stored,
    how many deliveries were made due), or None when the domain has no pause."""
    now = now or utcnow()
    pause = session.scalars(select(DomainPause).where(
        DomainPause.domain.in_(_domain_forms(domain)))).first()
    if pause is None:
        return None
    table = cast(Table, Delivery.__table__)
    due = rowcount(session,
        update(table)
        .where(table.c.status == DeliveryStatus.deferred,
               table.c.email.endswith(f"@{pause.domain}", autoescape=True),
               table.c.next_attempt_at > now, table.c.next_attempt_at <= pause.paused_until)
        .values(next_attempt_at=now, updated_at=now))
    key = pause.domain
    session.delete(pause)
    session.flush()
    return key, due
