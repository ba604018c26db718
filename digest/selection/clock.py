"""Rule C1: no real send moves a watermark past the real present.

A run's cutoff becomes its readers' watermark (digests) or the end of the alert window
(alerts); a cutoff ahead of the clock would leave every item ingested until then before the
window, never sent. ``--as-of`` and the other ways of giving planning a clock are for dry runs
and previews. Checked where a real run is planned, so every caller (the CLI, the beat's tick,
the API, a script) is covered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digest.errors import ValidationError
from digest.models import utcnow

# Clocks of two machines (the operator's and the database's or the workers') differ by
# seconds, and an --as-of typed as the current minute is not "ahead". A minute allows both.
CLOCK_TOLERANCE = timedelta(minutes=1)


def check_real_send_clock(now: datetime | None, *, dry_run: bool = False) -> None:
    """Refuse a real send planned as of a moment ahead of the present (rule C1)."""
    if dry_run or now is None:
        return
    present = utcnow()
    if now > present + CLOCK_TOLERANCE:
        raise ValidationError(
            f"the clock given ({_when(now)}) is ahead of the present ({_when(present)}): a real "
            "send would move readers' watermarks into the future and skip what is ingested "
            "until then; use it only with --dry-run or 'digest preview --as-of', or leave it "
            "out to send now")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["CLOCK_TOLERANCE", "check_real_send_clock"]
