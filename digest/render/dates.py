"""Dates as a reader sees them: in their time zone, '9 October 2025', '2–9 October 2025'."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ValidationError

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def zone_info(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Vienna' or 'UTC'"
        ) from None


def day_text(d: date) -> str:
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def local_date(value: date | datetime, zone: ZoneInfo) -> date:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(zone).date()
    return value


def period_text(start: date | None, end: date | None, short: bool = False) -> str:
    """'2–9 October 2025', '28 September – 5 October 2025'; short months for subjects."""
    if start is None:
        if end is None:
            return ""
        start = end
    elif end is None:
        end = start
    if start > end:
        raise ValidationError(f"period_start {start} is after period_end {end}; swap them")

    def month(d: date) -> str:
        return _MONTHS[d.month - 1][:3] if short else _MONTHS[d.month - 1]

    if start == end:
        return f"{end.day} {month(end)} {end.year}"
    if (start.year, start.month) == (end.year, end.month):
        return f"{start.day}\u2013{end.day} {month(end)} {end.year}"
    if start.year == end.year:
        return f"{start.day} {month(start)} \u2013 {end.day} {month(end)} {end.year}"
    return f"{start.day} {month(start)} {start.year} \u2013 {end.day} {month(end)} {end.year}"
