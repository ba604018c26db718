"""Subscribers and their filters: validation, add/update, CSV import and export, leaving.

``validate`` checks what a reader or an operator gives us (``canonical_email`` is the stored
address form), ``filters`` handles filters by name, ``manage`` writes subscribers (a status
and the suppression list through ``digest.records.suppressions``), ``csv_io`` imports and
exports them.
"""

from __future__ import annotations

from digest.records.suppressions import Left, set_status, who_left
from digest.subscribers.csv_io import ImportReport, export_csv, import_csv
from digest.subscribers.filters import (
    FilterSpec,
    describe_filter,
    parse_filter,
    with_filters,
)
from digest.subscribers.manage import (
    Erased,
    erase_subscriber,
    find_subscriber,
    purge_unconfirmed,
    suppress,
    suppression_of,
    unsubscribe,
    unsuppress,
    upsert_subscriber,
)
from digest.subscribers.validate import (
    WEEKDAYS,
    canonical_email,
    check_choice,
    check_hour,
    check_timezone,
    check_weekday,
    timezone_names,
)

__all__ = [
    "WEEKDAYS",
    "Erased",
    "FilterSpec",
    "ImportReport",
    "Left",
    "canonical_email",
    "check_choice",
    "check_hour",
    "check_timezone",
    "check_weekday",
    "describe_filter",
    "erase_subscriber",
    "export_csv",
    "find_subscriber",
    "import_csv",
    "parse_filter",
    "purge_unconfirmed",
    "set_status",
    "suppress",
    "suppression_of",
    "timezone_names",
    "unsubscribe",
    "unsuppress",
    "upsert_subscriber",
    "who_left",
    "with_filters",
]
