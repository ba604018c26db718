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
from digest.records.suppressions import RECEIVING, Left, who_left
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
FILTER_COLUMNS = ("themes", "locations", "content_types")


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    # Lines left alone on purpose (rule I2: nobody who left is re-subscribed), with the reason.
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"{self.added} added, {self.updated} updated{skipped}, "
                f"{len(self.errors)} rejected")


@dataclass
class _Rows:
    """One address's rows: the fields they carry (the first row that gives one wins) and
    one filter a row."""

    lines: list[int] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    specs: list[FilterSpec] = field(default_factory=list)

    def add(self, line: int, fields: dict[str, Any], spec: FilterSpec) -> None:
        self.lines.append(line)
        self.fields = fields | self.fields
        self.specs.append(spec)


def _split(cell: str | None) -> list[str]:
    return [v.strip() for v in (cell or "").split("|") if v.strip()]


def import_csv(session: Session, text: str, *, smtputf8: bool) -> ImportReport:
    """Import subscribers, one filter per row (several rows for one address add filters).

    Rule I1: a new address gets what its rows say and the defaults for the rest; an existing
    one changes only in the fields its rows carry (an empty cell or a missing column keeps
    the stored value). Filter columns, when the header has any, replace the reader's filters
    with the address's rows (a row with every filter cell empty: no filter, everything).
    Rule I2: an address whose reader unsubscribed or was suppressed, or that is on the
    suppression list, is never made active or pending: its lines are reported in
    ``skipped`` with the reason, and the reader is left as they are. Recording that someone
    left (status unsubscribed or suppressed) is imported like any other change.

    Every row is validated on its own: a bad row is reported with its line number and
    reason and the good ones are imported. Importing the same file twice changes nothing.
    ``smtputf8`` (the DIGEST_SMTPUTF8 setting): whether a non-ASCII local part is accepted.
    """
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text))
    columns = [f.strip() for f in reader.fieldnames or []]
    if "email" not in columns:
        raise ValidationError("the CSV needs a header row with at least 'email'; "
                              f"columns: {', '.join(CSV_FIELDS)}")
    has_filters = any(name in columns for name in FILTER_COLUMNS)
    rows: dict[str, _Rows] = {}
    for row in reader:
        line = reader.line_num
        cells = {(k or "").strip(): _unquote_cell((v or "").strip()) for k, v in row.items() if k}
        try:
            address = canonical_email(cells.get("email", ""), smtputf8=smtputf8)
            spec = _filter_of(session, cells)
            fields = _fields_of(cells)
        except ValidationError as exc:
            report.errors.append((line, str(exc)))
            continue
        rows.setdefault(address, _Rows()).add(line, fields, spec)
    left = who_left(session, rows)
    # In address order: two imports of overlapping files lock the rows in the same order, so
    # on PostgreSQL one waits for the other instead of deadlocking.
    for address in sorted(rows):
        if _would_resubscribe(rows[address], left.get(address)):
            reason = (f"skipped: {left[address].reason}; an import never re-subscribes anyone "
                      "who left. They can subscribe again themselves, or an operator can "
                      f"re-activate them with 'digest subscribers add {address} --status "
                      "active'")
            report.skipped.extend((line, reason) for line in rows[address].lines)
            continue
        _import_address(session, address, rows[address], has_filters, report, smtputf8)
    report.skipped.sort()  # in the file's order, as the errors
    return report


def _filter_of(session: Session, cells: dict[str, str]) -> FilterSpec:
    """The row's filter, its names checked against the taxonomy (none is created)."""
    spec = FilterSpec(_split(cells.get("themes")), _split(cells.get("locations")),
                      _split(cells.get("content_types")))
    facets: list[tuple[taxonomy.Facet, list[str]]] = [
        ("theme", spec.themes), ("location", spec.locations),
        ("content_type", spec.content_types)]
    for facet, names in facets:
        taxonomy.resolve(session, facet, names, create=False)
    return spec


def _fields_of(cells: dict[str, str]) -> dict[str, Any]:
    """The fields the row carries (a non-empty cell), checked; the others are not touched."""
    checks: dict[str, Any] = {
        "frequency": lambda v: check_choice("frequency", v, [f.value for f in Frequency]),
        "timezone": check_timezone,
        "weekday": check_weekday,
        "hour": check_hour,
        "status": lambda v: check_choice("status", v, [s.value for s in SubscriberStatus]),
    }
    return {name: check(cells[name]) for name, check in checks.items() if cells.get(name)}


def _would_resubscribe(rows: _Rows, left: Left | None) -> bool:
    """Whether importing these rows would make someone who left receive mail again: a status
    of active or pending, or no status at all for an address whose reader has not left
    itself (a new address defaults to active)."""
    if left is None:
        return False
    status = rows.fields.get("status")
    return status in RECEIVING if status is not None else not left.reader_left


def _import_address(session: Session, address: str, rows: _Rows, has_filters: bool,
                    report: ImportReport, smtputf8: bool) -> None:
    _sub, created = upsert_subscriber(
        session, address, smtputf8=smtputf8,
        filters=[s for s in rows.specs if s != FilterSpec()] if has_filters else None,
        suppression_detail=f"suppressed by a CSV import (line {rows.lines[0]})",
        **rows.fields)
    if created:
        report.added += 1
    else:
        report.updated += 1


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

