"""The fault campaign's clock skew for one worker (``bench/faults.py``, kinds clock-ahead and
clock-behind); never used in production.

Put on the worker's PYTHONPATH with ``DIGEST_BENCH_CLOCK_FILE`` set, it makes the process's wall
clock (``time.time``, ``datetime.now``/``utcnow`` and friends) run the number of seconds in that
file ahead (or behind, if negative), re-read every half second, in Celery's forked pool
processes too. Monotonic clocks are left alone, as on a machine whose wall clock drifted.
It uses time-machine because Debian's libfaketime (0.9.10) cannot skew Python 3.11: with the
monotonic clock faked every timed wait waits the skew too, without it ``time.sleep`` fails
with EINVAL (docs/adr/0027-fault-campaign-counts-what-it-sees.md).
"""

from __future__ import annotations

import os
import threading
import time

_PATH = os.environ.get("DIGEST_BENCH_CLOCK_FILE")


def _skew() -> None:
    import time_machine

    wall0, mono0 = time.time(), time.monotonic()  # before any travel: the real clock
    state: dict = {"offset": 0.0, "traveller": None}

    def read() -> float:
        try:
            with open(_PATH, encoding="ascii") as f:  # type: ignore[arg-type]
                return float(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def apply(offset: float) -> None:
        if offset == state["offset"]:
            return
        if state["traveller"] is not None:
            state["traveller"].stop()
            state["traveller"] = None
        if offset:
            real_now = wall0 + (time.monotonic() - mono0)
            traveller = time_machine.travel(real_now + offset, tick=True)
            traveller.start()
            state["traveller"] = traveller
        state["offset"] = offset

    def poll() -> None:
        while True:
            apply(read())
            time.sleep(0.5)

    def start() -> None:
        threading.Thread(target=poll, name="clockskew", daemon=True).start()

    apply(read())
    start()
    os.register_at_fork(after_in_child=start)


if _PATH:
    _skew()
