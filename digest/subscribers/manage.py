"""Subscribers and their filters: validation, add/update, CSV import and export, leaving."""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from digest import taxonomy
from digest.conflicts import insert_ignoring_conflict
from digest.delivery import states as delivery_states
from digest.errors import ValidationError
from digest.mail import normalise_address
from digest.models import (
    Bounce,
    Delivery,
    DeliveryStatus,
    Frequency,
    Subscriber,
    SubscriberFilter,
    SubscriberStatus,
    Suppression,
    utcnow,
)

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
CSV_FIELDS = ["email", "frequency", "timezone", "weekday", "hour", "themes", "locations",
              "content_types", "status"]


def with_filters() -> tuple:
    """Loader options: subscribers' filters with their three facets, a query per level."""
    return (
        selectinload(Subscriber.filters).selectinload(SubscriberFilter.themes),
        selectinload(Subscriber.filters).selectinload(SubscriberFilter.locations),
        selectinload(Subscriber.filters).selectinload(SubscriberFilter.content_types),
    )


@dataclass
class FilterSpec:
    """One filter by names; an empty list matches anything on that facet."""

    themes: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [
            " or ".join(self.themes) or "any theme",
            " or ".join(self.locations) or "anywhere",
            " or ".join(self.content_types) or "any type",
        ]
        return ", ".join(parts)


def describe_filter(f: SubscriberFilter) -> str:
    return FilterSpec([t.name for t in f.themes], [loc.name for loc in f.locations],
                      [c.name for c in f.content_types]).describe()


def parse_filter(text: str) -> FilterSpec:
    """``themes=Policing|Gender equality;locations=OSCE Mission to Serbia;types=News``."""
    spec = FilterSpec()
    aliases = {"themes": "themes", "theme": "themes", "locations": "locations",
               "location": "locations", "types": "content_types", "type": "content_types",
               "content_types": "content_types"}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        facet = aliases.get(key.strip().lower())
        if not sep or facet is None:
            raise ValidationError(
                f"bad filter part {part!r}: write facet=value|value with facets themes, "
                "locations, types, separated by ';'"
            )
        getattr(spec, facet).extend(v.strip() for v in value.split("|") if v.strip())
    return spec


def canonical_email(addr: str) -> str:
    """The one form an address is stored, compared and suppressed in.

    Local parts are case-sensitive in theory and never in practice; treating
    ``Ana@Example.org`` and ``ana@example.org`` as two people would let one of them escape
    a suppression or subscribe twice. A non-ASCII local part (only with DIGEST_SMTPUTF8) is
    kept in NFC.
    """
    address = normalise_address(addr).lower()
    # Lower-casing can leave NFC ("H" + U+0331 lowers to "h" + U+0331, which composes).
    return address if address.isascii() else unicodedata.normalize("NFC", address)


def _lookup_form(addr: str) -> str:
    # Bounce reports and admins may hand us addresses we would not accept as new ones.
    try:
        return canonical_email(addr)
    except ValidationError:
        return addr.strip().lower()


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Vienna or UTC"
        ) from exc
    return name


def timezone_names() -> list[str]:
    return sorted(available_timezones())


def check_weekday(value: int | str) -> int:
    text = str(value).strip().lower()
    if text.isdigit() and 0 <= int(text) <= 6:
        return int(text)
    for i, day in enumerate(WEEKDAYS):
        if len(text) >= 3 and day.startswith(text):
            return i
    raise ValidationError(f"bad weekday {value!r}: use monday..sunday or 0 (Monday) to 6")


def check_hour(value: int | str) -> int:
    try:
        hour = int(value)
    except (TypeError, ValueError):
        hour = -1
    if not 0 <= hour <= 23:
        raise ValidationError(f"bad hour {value!r}: use 0 to 23 (local time)")
    return hour


def check_choice(kind: str, value: str, choices: list[str]) -> str:
    if value not in choices:
        raise ValidationError(f"bad {kind} {value!r}: choose one of {', '.join(choices)}")
    return value


def _build_filters(session: Session, specs: list[FilterSpec], create: bool) -> list[SubscriberFilter]:
    filters = []
    for spec in specs:
        f = SubscriberFilter()
        f.themes = taxonomy.resolve(session, "theme", spec.themes, create=create)
        f.locations = taxonomy.resolve(session, "location", spec.locations, create=create)
        f.content_types = taxonomy.resolve(session, "content_type", spec.content_types, create=create)
        filters.append(f)
    return filters


def upsert_subscriber(
    session: Session,
    email: str,
    *,
    filters: list[FilterSpec] | None = None,
    frequency: str = Frequency.weekly.value,
    timezone: str = "UTC",
    weekday: int | str = 0,
    hour: int | str = 8,
    status: str = SubscriberStatus.active.value,
    group_by: str = "theme",
    create_taxonomy: bool = False,
) -> tuple[Subscriber, bool]:
    """Add a subscriber or update the one with that address. Returns (subscriber, created).

    Everything is validated before anything is written; unknown themes, locations or types
    raise ``UnknownTaxonomyError`` unless ``create_taxonomy``.
    """
    address = canonical_email(email)
    check_choice("frequency", frequency, [f.value for f in Frequency])
    check_choice("status", status, [s.value for s in SubscriberStatus])
    check_choice("group_by", group_by, ["theme", "location"])
    check_timezone(timezone)
    weekday, hour = check_weekday(weekday), check_hour(hour)
    built = _build_filters(session, filters or [], create_taxonomy)

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
    sub.status = status
    if status == SubscriberStatus.active.value:
        sub.confirmed_at = sub.confirmed_at or now
        sub.unsubscribed_at = None
    elif status in (SubscriberStatus.unsubscribed.value, SubscriberStatus.suppressed.value):
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
    result = session.execute(
        delete(Subscriber).where(Subscriber.status == SubscriberStatus.pending.value,
                                 Subscriber.created_at < cutoff)
    )
    return result.rowcount or 0


def find_subscriber(session: Session, email: str) -> Subscriber:
    """The subscriber with this address (any capitals), or ValidationError saying so."""
    address = _lookup_form(email)
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
    bounces = session.execute(delete(Bounce).where(
        or_(Bounce.email == sub.email, Bounce.delivery_id.in_(delivery_ids)))).rowcount or 0
    # Deliveries, the ledger and delivery items go by the foreign keys' ON DELETE CASCADE.
    session.execute(delete(Delivery).where(Delivery.subscriber_id == sub.id))
    kept = session.scalar(select(func.count()).where(Suppression.email == sub.email)) > 0
    email = sub.email
    session.delete(sub)
    session.flush()
    return Erased(email, deliveries, bounces, kept)


def unsubscribe(session: Session, sub: Subscriber) -> None:
    set_status(session, sub, SubscriberStatus.unsubscribed.value)


def suppress(session: Session, email: str, reason: str, detail: str = "") -> Suppression:
    """Put an address on the suppression list and stop its subscriber's pending mail."""
    address = _lookup_form(email)
    row = session.scalars(select(Suppression).where(Suppression.email == address)).one_or_none()
    if row is None:
        row = Suppression(email=address, reason=reason, detail=detail, created_at=utcnow())
        session.add(row)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status != SubscriberStatus.suppressed.value:
        set_status(session, sub, SubscriberStatus.suppressed.value)
    session.flush()
    return row


def unsuppress(session: Session, email: str) -> bool:
    address = _lookup_form(email)
    row = session.scalars(select(Suppression).where(Suppression.email == address)).one_or_none()
    if row is None:
        return False
    session.delete(row)
    sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if sub is not None and sub.status == SubscriberStatus.suppressed.value:
        set_status(session, sub, SubscriberStatus.active.value)
    session.flush()
    return True


# --- CSV --------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.added} added, {self.updated} updated, {len(self.errors)} rejected"


def _split(cell: str | None) -> list[str]:
    return [v.strip() for v in (cell or "").split("|") if v.strip()]


def import_csv(session: Session, text: str) -> ImportReport:
    """Import subscribers, one filter per row (several rows for one address add filters).

    Every row is validated on its own: a bad row is reported with its line number and
    reason and the good ones are imported. Importing the same file twice changes nothing.
    """
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "email" not in [f.strip() for f in reader.fieldnames]:
        raise ValidationError(f"the CSV needs a header row with at least 'email'; columns: {', '.join(CSV_FIELDS)}")
    rows: dict[str, tuple[int, dict, list[FilterSpec]]] = {}
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip(): _unquote_cell((v or "").strip()) for k, v in row.items() if k}
        try:
            address = canonical_email(row.get("email", ""))
            spec = FilterSpec(_split(row.get("themes")), _split(row.get("locations")),
                              _split(row.get("content_types")))
            for facet, names in (("theme", spec.themes), ("location", spec.locations),
                                 ("content_type", spec.content_types)):
                taxonomy.resolve(session, facet, names, create=False)
            options = {
                "frequency": check_choice("frequency", row.get("frequency") or "weekly",
                                          [f.value for f in Frequency]),
                "timezone": check_timezone(row.get("timezone") or "UTC"),
                "weekday": check_weekday(row.get("weekday") or 0),
                "hour": check_hour(row.get("hour") or 8),
                "status": check_choice("status", row.get("status") or "active",
                                       [s.value for s in SubscriberStatus]),
            }
        except ValidationError as exc:
            report.errors.append((line, str(exc)))
            continue
        if address in rows:
            rows[address][2].append(spec)
        else:
            rows[address] = (line, options, [spec])
    # In address order: two imports of overlapping files lock the rows in the same order, so
    # on PostgreSQL one waits for the other instead of deadlocking.
    for address in sorted(rows):
        _line, options, specs = rows[address]
        _sub, created = upsert_subscriber(
            session, address, filters=[s for s in specs if s != FilterSpec()], **options)
        if created:
            report.added += 1
        else:
            report.updated += 1
    return report


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _unquote_cell(value: str) -> str:
    """Undo the ``'`` that ``export_csv`` puts before a cell a spreadsheet would run, so an
    export imports back unchanged."""
    return value[1:] if value[:1] == "'" and value[1:2] in _FORMULA_STARTS else value


def export_csv(session: Session) -> str:
    """Every subscriber, one row per filter, in the format ``import_csv`` reads.

    A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or CR gets a leading ``'``
    (OWASP CSV injection): a spreadsheet would run it as a formula. Addresses and taxonomy
    names may legally start with those characters.
    """
    def cell(value: object) -> object:
        text = str(value)
        return "'" + text if text[:1] in _FORMULA_STARTS else value

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    subs = session.scalars(
        select(Subscriber).order_by(Subscriber.id).options(
            *with_filters()
        )
    )
    for sub in subs:
        base = {"email": sub.email, "frequency": sub.frequency, "timezone": sub.timezone,
                "weekday": WEEKDAYS[sub.weekday], "hour": sub.hour, "status": sub.status}
        for f in sub.filters or [None]:
            row = base | ({
                "themes": "|".join(t.name for t in f.themes),
                "locations": "|".join(loc.name for loc in f.locations),
                "content_types": "|".join(c.name for c in f.content_types),
            } if f else {"themes": "", "locations": "", "content_types": ""})
            writer.writerow({key: cell(value) for key, value in row.items()})
    return out.getvalue()


def local_now(sub: Subscriber, now: datetime) -> datetime:
    return now.astimezone(ZoneInfo(sub.timezone))
