"""Acting on a complaint: the reader marked a digest as spam (an ARF report by mail, a
provider's complaint event). The address is suppressed at once with reason ``complaint``
through ``digest.records.suppressions.suppress`` (which stops their planned mail), and the complaint
is a ``complaints`` row against the delivery it names, once per report: the same report
again records and changes nothing. The delivery keeps its status (it was delivered).

Feedback that is no complaint changes nothing for the reader: ``not-spam`` takes one back;
``virus`` and ``auth-failure`` are about the message or our authentication and are logged
for the operator.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from digest.bounces.arf import NOT_SPAM, FeedbackReport
from digest.bounces.process import DUPLICATE, RECORDED, UNMATCHED, BounceOutcome, find_delivery
from digest.models import Complaint, SuppressionReason, utcnow
from digest.records.suppressions import suppress

log = logging.getLogger(__name__)

COMPLAINT = "complaint"  # the class a complaint is listed with (``--json``, the outcome)


def process_complaint(session: Session, report: FeedbackReport, *, extra_verp: list[int],
                      by_address: str | None = None, dry_run: bool = False) -> BounceOutcome:
    """Record one complaint and suppress its reader; the caller commits.

    ``by_address``: a provider that authenticated its event names the recipient; tried
    after the VERP, Message-ID and X-Digest-Delivery (the latest delivery to it).
    """
    address = report.recipient or None
    listed = [{"address": address, "status": None,
               "class": COMPLAINT if report.is_complaint else report.feedback_type}]
    if not report.is_complaint:
        if report.feedback_type == NOT_SPAM:
            why = "a not-spam report (the reader took a complaint back): nothing to do"
        else:
            log.warning("%s feedback report (%s) about our mail: %s", report.feedback_type,
                        report.source, report.detail)
            why = (f"a {report.feedback_type} report is about the message or our "
                   "authentication, not the reader: nothing changed; check the sending set-up")
        return BounceOutcome(UNMATCHED, why, recipients=listed, dry_run=dry_run)
    delivery, matched_by = find_delivery(session, report, extra_verp + report.verp_ids,
                                         by_address=by_address)
    if delivery is None:
        return BounceOutcome(UNMATCHED, "the complaint names no delivery of ours (no known VERP "
                             "address, Message-ID or X-Digest-Delivery): nothing to do",
                             recipients=listed, dry_run=dry_run)
    listed = [{"address": delivery.email, "status": None, "class": COMPLAINT}]
    outcome = BounceOutcome(RECORDED, "", delivery_id=delivery.id, email=delivery.email,
                            diagnostic=report.detail, matched_by=matched_by, recipients=listed,
                            dry_run=dry_run, complaint=True)
    detail = f"{report.source} {report.feedback_type} complaint"
    if report.detail:
        detail += f" ({report.detail})"
    if dry_run:
        seen = session.scalar(select(func.count()).select_from(Complaint).where(
            Complaint.delivery_id == delivery.id, Complaint.report_hash == report.report_hash))
        if seen:
            outcome.result, outcome.reason = DUPLICATE, "processed before: nothing would change"
        else:
            outcome.reason = (f"would suppress {delivery.email} (complaint) and record it "
                              f"against delivery #{delivery.id}")
        return outcome
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    complaint_id = session.scalar(insert(Complaint).values(
        delivery_id=delivery.id, email=delivery.email, source=report.source,
        feedback_type=report.feedback_type, detail=report.detail,
        report_hash=report.report_hash, created_at=utcnow(),
    ).on_conflict_do_nothing().returning(Complaint.id))
    if complaint_id is None:
        outcome.result = DUPLICATE
        outcome.reason = "this complaint was processed before: nothing changed"
        return outcome
    suppress(session, delivery.email, SuppressionReason.complaint, detail)
    outcome.suppressed = True
    outcome.reason = "the reader marked the digest as spam: suppressed"
    log.info("complaint about delivery %s: %s suppressed", delivery.id, delivery.email)
    session.flush()
    return outcome


def recent_complaints(session: Session, limit: int = 50) -> list[Complaint]:
    """The latest complaints, newest first (``digest bounces complaints``)."""
    return list(session.scalars(select(Complaint).order_by(Complaint.id.desc()).limit(limit)))
