"""Checking what a subscriber gives us: the stored address form, time zones, weekdays, hours.

``canonical_email`` is the one name for the form an address is stored, compared and
suppressed in, and ``lookup_form`` the form to look one up by; both are
``digest.addresses``'s (the shared top), named here for subscribers' callers.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from digest.addresses import canonical_email, lookup_form
from digest.errors import ValidationError

__all__ = [
    "WEEKDAYS", "canonical_email", "check_choice", "check_hour", "check_timezone",
    "check_weekday", "lookup_form", "timezone_names",
]

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


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

