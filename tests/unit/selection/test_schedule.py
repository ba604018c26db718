"""Slots in local time, computed without a database: DST changes, a year of weekly hours."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from digest.selection import due_local_hours

HOUR = timedelta(hours=1)


# --- which local hours a UTC slot takes (no database) ----------------------------------------

def slot_hours(zone: str, slot: datetime) -> list[tuple[int, int]]:
    return sorted(due_local_hours(zone, slot - HOUR, slot))


@pytest.mark.parametrize("zone, slot, due", [
    # Vienna springs forward 02:00 -> 03:00 on Sunday 2025-03-30 (01:00 UTC): 02:00 goes with 03:00
    ("Europe/Vienna", datetime(2025, 3, 30, 0, tzinfo=UTC), [(6, 1)]),
    ("Europe/Vienna", datetime(2025, 3, 30, 1, tzinfo=UTC), [(6, 2), (6, 3)]),
    ("Europe/Vienna", datetime(2025, 3, 30, 2, tzinfo=UTC), [(6, 4)]),
    # ... and falls back 03:00 -> 02:00 on 2025-10-26: 02:00 counts the first time only
    ("Europe/Vienna", datetime(2025, 10, 26, 0, tzinfo=UTC), [(6, 2)]),
    ("Europe/Vienna", datetime(2025, 10, 26, 1, tzinfo=UTC), []),
    ("Europe/Vienna", datetime(2025, 10, 26, 2, tzinfo=UTC), [(6, 3)]),
    ("America/New_York", datetime(2025, 3, 9, 7, tzinfo=UTC), [(6, 2), (6, 3)]),
    ("America/New_York", datetime(2025, 11, 2, 5, tzinfo=UTC), [(6, 1)]),
    ("America/New_York", datetime(2025, 11, 2, 6, tzinfo=UTC), []),
    # +05:45: 08:00 in Kathmandu is 02:15 UTC, planned at 03:00 UTC (never early)
    ("Asia/Kathmandu", datetime(2025, 10, 13, 2, tzinfo=UTC), [(0, 7)]),
    ("Asia/Kathmandu", datetime(2025, 10, 13, 3, tzinfo=UTC), [(0, 8)]),
    # Lord Howe's 30-minute shifts: 02:00 -> 02:30 on 2025-10-05, 02:00 -> 01:30 on 2025-04-06
    ("Australia/Lord_Howe", datetime(2025, 10, 4, 16, tzinfo=UTC), [(6, 2), (6, 3)]),
    ("Australia/Lord_Howe", datetime(2025, 4, 5, 15, tzinfo=UTC), []),
    ("Australia/Lord_Howe", datetime(2025, 4, 5, 16, tzinfo=UTC), [(6, 2)]),
])
def test_a_slot_takes_the_local_hours_that_first_come_round_in_its_hour(zone, slot, due):
    assert slot_hours(zone, slot) == due


@pytest.mark.parametrize("zone", ["Europe/Vienna", "America/New_York", "Asia/Kathmandu",
                                  "Australia/Lord_Howe", "UTC"])
def test_over_a_year_every_local_weekday_and_hour_is_due_once_a_week(zone):
    seen: dict[tuple[int, int], list[datetime]] = defaultdict(list)
    slot = datetime(2025, 1, 1, tzinfo=UTC)
    while slot < datetime(2026, 1, 1, tzinfo=UTC):
        for pair in due_local_hours(zone, slot - HOUR, slot):
            seen[pair].append(slot)
        slot += HOUR
    assert len(seen) == 7 * 24
    for slots in seen.values():
        gaps = {b - a for a, b in zip(slots, slots[1:], strict=False)}
        # a week, give or take the daylight-saving change (30 minutes on Lord Howe: one slot)
        assert gaps <= {timedelta(hours=h) for h in (167, 168, 169)}, gaps
