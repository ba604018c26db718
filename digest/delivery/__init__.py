"""Delivery: the one owner of every delivery state change, the one classifier of failures,
domain pauses, and sending a batch.

Other stages call these names; none of them writes a delivery's status itself.
"""

from digest.delivery.classify import Fault, Verdict, classify_dsn, classify_smtp, enhanced_status
from digest.delivery.confirmations import build_confirmation, send_confirmation
from digest.delivery.pauses import (
    Pause,
    active_pauses,
    pause_domain,
    recipient_domain,
    resume_domain,
)
from digest.delivery.progress import describe_progress, run_progress, runs_progress
from digest.delivery.send import (
    BatchResult,
    load_batch,
    render_delivery,
    render_for_browser,
    send_deliveries,
)
from digest.delivery.states import (
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
from digest.delivery.transport import (
    SendResult,
    SMTPTransport,
    Transport,
    error_for,
    transport_from_settings,
)
from digest.queue import batches

__all__ = [
    "CLAIMABLE", "UNFINISHED", "BatchResult", "Fault", "Pause",
    "SMTPTransport", "build_confirmation", "send_confirmation",
    "SendResult", "Swept", "Transport", "Verdict", "error_for", "transport_from_settings",
    "active_pauses", "batches", "cancel_for_subscriber", "cancel_run", "claim", "classify_dsn",
    "classify_smtp", "describe_progress", "due_for_retry", "enhanced_status", "finish_done_runs",
    "finish_run_if_done", "load_batch", "mark_bounced", "mark_planned", "orphaned_pending",
    "pause_domain", "put_back", "recipient_domain", "recover_expired_leases", "render_delivery",
    "render_for_browser", "requeue_failed", "resume_domain", "retry_delay", "run_progress",
    "runs_progress", "send_deliveries", "sweep",
]
