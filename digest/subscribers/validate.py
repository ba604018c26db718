"""Checking what a subscriber gives us: the stored address form, time zones, weekdays, hours.

``canonical_email`` is the one name for the form an address is stored, compared and
suppressed in; it builds on ``digest.mail.normalise_address`` (valid and normalised, not
lower-cased), which is a different thing.
"""

from __future__ import annotations

import unicodedata
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from digest.errors import ValidationError
from digest.mail import normalise_address

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def canonical_email(addr: str, *, smtputf8: bool) -> str:
    """The one form an address is stored, compared and suppressed in.

    Local parts are case-sensitive in theory and never in practice; treating
    ``Ana@Example.org`` and ``ana@example.org`` as two people would let one of them escape
    a suppression or subscribe twice. A non-ASCII local part (only with ``smtputf8``, the
    DIGEST_SMTPUTF8 setting) is kept in NFC.
    """
    address = normalise_address(addr, smtputf8=smtputf8).lower()
    # Lower-casing can leave NFC ("H" + U+0331 lowers to "h" + U+0331, which composes).
    return address if address.isascii() else unicodedata.normalize("NFC", address)


def lookup_form(addr: str) -> str:
    # Bounce reports and admins may hand us addresses we would not accept as new ones: a
    # look-up accepts every form an address may be stored in, whatever DIGEST_SMTPUTF8 says.
    try:
        return canonical_email(addr, smtputf8=True)
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

