"""Records: the delivery record, the bottom stage layer, directly above the shared top.

What a delivery carries (``contents``), every change of a delivery's status, one function a
transition (``states``), paused domains (``pauses``) and a reader's suppression (the rule:
a suppressed status has a suppression row). It imports only the shared top; every stage
above it (subscribers, selection, delivery, bounces) calls down into it, and none writes a
delivery's status itself.
"""

from digest.records.pauses import (
    Pause,
    active_pauses,
    pause_domain,
    recipient_domain,
    resume_domain,
)
from digest.records.states import (
    CLAIMABLE,
    UNFINISHED,
    Swept,
    cancel_for_subscriber,
    cancel_run,
    claim,
    due_for_retry,
    finish_done_runs,
    finish_run_if_done,
    mark_bounced,
    mark_planned,
    orphaned_pending,
    put_back,
    recover_expired_leases,
    requeue_failed,
    retry_delay,
    sweep,
)

__all__ = [
    "CLAIMABLE", "UNFINISHED", "Pause", "Swept", "active_pauses", "cancel_for_subscriber",
    "cancel_run", "claim", "due_for_retry", "finish_done_runs", "finish_run_if_done",
    "mark_bounced", "mark_planned", "orphaned_pending", "pause_domain", "put_back",
    "recipient_domain", "recover_expired_leases", "requeue_failed", "resume_domain",
    "retry_delay", "sweep",
]
