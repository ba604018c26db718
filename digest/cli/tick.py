"""``digest tick``: one pass of the beat's periodic work, in this process.

A broker-less install has no beat: without this nothing would plan the weekly and daily
slots, close alert windows, retry deferred messages or find lost work. Run it from cron every
few minutes (``*/5 * * * * digest tick``); every step is safe to run twice.
"""

from __future__ import annotations

from digest.cli._common import console, ensure_db
from digest.settings import get_settings


def tick() -> None:
    """Poll the due registered sources; plan and send the due weekly and daily slots, the
    alert windows that closed, the deferred messages whose retry is due, then sweep for lost
    work: what the beat's periodic tasks do, done here and now (for an install without
    DIGEST_BROKER_URL; run it from cron every few minutes)."""
    from digest.delivery.periodic import (
        poll_due_sources,
        retry_deferred,
        send_due_alerts,
        send_due_slots,
        sweep_lost_work,
    )
    from digest.ingest.websub import maintain as maintain_websub

    ensure_db()
    settings = get_settings()
    polled = poll_due_sources(settings)
    say(f"sources: {len(polled)} due source(s) polled, "
        f"{sum(o.new_items for o in polled)} new item(s), "
        f"{sum(o.status == 'failed' for o in polled)} failed")
    for frequency, plans in send_due_slots(settings).items():
        for plan in plans:
            say(f"{frequency}: {_slot_line(plan)}")
    say(f"alerts: {len(send_due_alerts(settings))} message(s) planned and sending")
    say(f"retry: {len(retry_deferred(settings))} deferred message(s) due, retried")
    found = sweep_lost_work(settings)
    say(f"sweep: {len(found.recovered)} expired lease(s) and {len(found.orphaned)} lost "
        f"pending message(s) sent again; {len(found.runs_finished)} run(s) finished, "
        f"{len(found.runs_held)} held")
    say(f"websub: {maintain_websub(settings).summary()}")


def _slot_line(plan) -> str:
    run = plan.run
    slot = f"slot {plan.slot:%Y-%m-%d %H:00} UTC, run #{run.run_id}"
    if not run.created:
        return f"{slot} already planned: nothing new"
    if plan.held:
        return (f"{slot} held: {run.planned} digest(s) past the send-by deadline "
                f"(DIGEST_SEND_BY_HOURS); 'digest runs release {run.run_id}' sends them")
    return f"{slot}: sending {run.planned} digest(s), {run.skipped} empty skipped"


def say(line: str) -> None:
    console.print(line, markup=False, highlight=False)
