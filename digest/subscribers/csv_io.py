"""Subscribers as CSV: import (each bad row reported with its line) and export."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest import taxonomy
from digest.errors import ValidationError
from digest.models import Frequency, Subscriber, SubscriberFilter, SubscriberStatus
from digest.subscribers.filters import FilterSpec, with_filters
from digest.subscribers.manage import upsert_subscriber
from digest.subscribers.validate import (
    WEEKDAYS,
    canonical_email,
    check_choice,
    check_hour,
    check_timezone,
    check_weekday,
)

CSV_FIELDS = ["email", "frequency", "timezone", "weekday", "hour", "themes", "locations",
              "content_types", "status"]


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.added} added, {self.updated} updated, {len(self.errors)} rejected"


def _split(cell: str | None) -> list[str]:
    return [v.strip() for v in (cell or "").split("|") if v.strip()]


def import_csv(session: Session, text: str, *, smtputf8: bool) -> ImportReport:
    """Import subscribers, one filter per row (several rows for one address add filters).

    Every row is validated on its own: a bad row is reported with its line number and
    reason and the good ones are imported. Importing the same file twice changes nothing.
    ``smtputf8`` (the DIGEST_SMTPUTF8 setting): whether a non-ASCII local part is accepted.
    """
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "email" not in [f.strip() for f in reader.fieldnames]:
        raise ValidationError("the CSV needs a header row with at least 'email'; "
                              f"columns: {', '.join(CSV_FIELDS)}")
    rows: dict[str, tuple[int, dict[str, Any], list[FilterSpec]]] = {}
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip(): _unquote_cell((v or "").strip()) for k, v in row.items() if k}
        try:
            address = canonical_email(row.get("email", ""), smtputf8=smtputf8)
            spec = FilterSpec(_split(row.get("themes")), _split(row.get("locations")),
                              _split(row.get("content_types")))
            facets: list[tuple[taxonomy.Facet, list[str]]] = [
                ("theme", spec.themes), ("location", spec.locations),
                ("content_type", spec.content_types)]
            for facet, names in facets:
                taxonomy.resolve(session, facet, names, create=False)
            options: dict[str, Any] = {
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
            session, address, smtputf8=smtputf8, filters=[s for s in specs if s != FilterSpec()],
            **options)
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
        filters: list[SubscriberFilter | None] = list(sub.filters) or [None]
        for f in filters:
            row = base | ({
                "themes": "|".join(t.name for t in f.themes),
                "locations": "|".join(loc.name for loc in f.locations),
                "content_types": "|".join(c.name for c in f.content_types),
            } if f else {"themes": "", "locations": "", "content_types": ""})
            writer.writerow({key: cell(value) for key, value in row.items()})
    return out.getvalue()

