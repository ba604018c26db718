"""Who gets what: set-based selection of (subscriber, item) pairs and run planning.

Everything here is one SQL statement per step for the whole run, never one query per
subscriber. The rules (docs/architecture.md): within a facet any value matches, across facets
all must match, an empty facet matches anything, several filters are a union, a region
covers its places; a subscriber with no filter at all takes everything. The window of a
scheduled digest is by ``ingested_at``: (watermark, cutoff]; the items a reader's deliveries
claim (``digest.records.contents``) are never carried to them again.

``matching`` holds the rule (one EXISTS condition, one set-based join, proven equal),
``planning`` the runs and the ledger, ``schedule`` the slots, catch-up and held runs,
``preview`` the read-only views of what a reader would get, ``clock`` the rule that no real
send is planned as of a moment ahead of the present.
"""

from digest.records.contents import delivery_contents
from digest.selection.matching import Window, item_matches_subscriber, window_for
from digest.selection.planning import (
    AdhocQuery,
    PlannedRun,
    RunShared,
    adhoc_item_condition,
    plan_adhoc_run,
    plan_due_alerts,
    plan_immediate_run,
)
from digest.selection.preview import matching_items, preview_items
from digest.selection.schedule import (
    CancelledRun,
    SlotPlan,
    cancel_run,
    due_condition,
    due_local_hours,
    due_slots,
    first_instant,
    give_back_items,
    last_planned_slot,
    plan_due_slots,
    plan_run_chunks,
    plan_scheduled_run,
    release_run,
    resume_stopped_planning,
    slot_key,
    slot_start,
)

__all__ = [
    "AdhocQuery", "CancelledRun", "PlannedRun", "RunShared", "SlotPlan", "Window",
    "adhoc_item_condition", "cancel_run", "delivery_contents", "due_condition",
    "due_local_hours", "due_slots",
    "first_instant", "give_back_items", "item_matches_subscriber", "last_planned_slot",
    "matching_items", "plan_adhoc_run", "plan_due_alerts", "plan_due_slots", "plan_immediate_run",
    "plan_run_chunks", "plan_scheduled_run", "preview_items", "release_run",
    "resume_stopped_planning", "slot_key", "slot_start", "window_for",
]
