"""Delivery: the one classifier of failures, sending a batch (its outcomes recorded through
``digest.records``), confirmations, progress and forecasts.
"""

from digest.delivery.classify import Fault, Verdict, classify_dsn, classify_smtp, enhanced_status
from digest.delivery.confirmations import build_confirmation, send_confirmation
from digest.delivery.progress import describe_progress, run_progress, runs_progress
from digest.delivery.send import (
    BatchResult,
    load_batch,
    render_delivery,
    render_for_browser,
    send_deliveries,
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
    "BatchResult", "Fault", "SMTPTransport", "SendResult", "Transport", "Verdict", "batches",
    "build_confirmation", "classify_dsn", "classify_smtp", "describe_progress",
    "enhanced_status", "error_for", "load_batch", "render_delivery", "render_for_browser",
    "run_progress", "runs_progress", "send_confirmation", "send_deliveries",
    "transport_from_settings",
]
