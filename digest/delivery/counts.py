"""The deliveries counted by run and status without counting ``deliveries``.

Triggers on ``deliveries`` (migration 0012) append every change's deltas to
``delivery_counts``; a count is the ``sum()`` of a run's rows there, read through its index on
``run_id``, so it costs the same at ten rows or ten million. ``fold`` folds the appended rows
back to one row per run and status (the scrape and the nightly prune call it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from digest.models import DeliveryCount, DigestRun


@dataclass(frozen=True)
class KindCount:
    kind: str
    status: str
    rows: int
    sent: int  # rows with a sent_at
    too_large: int  # failed as over the SMTP server's SIZE limit


def runs_counts(session: Session, run_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Deliveries by status for each run (statuses with none left out)."""
    ids = list(run_ids)
    counts: dict[int, dict[str, int]] = {run_id: {} for run_id in ids}
    if not ids:
        return counts
    for run_id, status, rows in session.execute(
        select(DeliveryCount.run_id, DeliveryCount.status, func.sum(DeliveryCount.rows))
        .where(DeliveryCount.run_id.in_(ids))
        .group_by(DeliveryCount.run_id, DeliveryCount.status)
    ):
        if rows:
            counts[run_id][status] = int(rows)
    return counts


def kind_counts(session: Session) -> list[KindCount]:
    """Deliveries by run kind and status, with those sent and those too large (one grouped
    query over ``delivery_counts`` and ``digest_runs``, neither as large as the log)."""
    rows = session.execute(
        select(DigestRun.kind, DeliveryCount.status, func.sum(DeliveryCount.rows),
               func.sum(DeliveryCount.sent), func.sum(DeliveryCount.too_large))
        .join(DigestRun, DigestRun.id == DeliveryCount.run_id)
        .group_by(DigestRun.kind, DeliveryCount.status)
    )
    return [KindCount(str(kind), str(status), int(n), int(sent), int(too_large))
            for kind, status, n, sent, too_large in rows if n or sent or too_large]


def fold(session: Session) -> int:
    """Replace the appended deltas with their sums, one row per run and status (none for
    those that sum to zero), in the caller's transaction; how many rows it read.

    ``DELETE ... RETURNING`` gives back exactly the rows this fold removed, so a row a
    concurrent transaction appends meanwhile is left for the next fold, and two folds at once
    each sum what they deleted: nothing is lost or counted twice."""
    removed = session.execute(delete(DeliveryCount).returning(
        DeliveryCount.run_id, DeliveryCount.status, DeliveryCount.rows, DeliveryCount.sent,
        DeliveryCount.too_large)).all()
    sums: dict[tuple[int, str], list[int]] = {}
    for run_id, status, rows, sent, too_large in removed:
        total = sums.setdefault((run_id, status), [0, 0, 0])
        total[0] += rows
        total[1] += sent
        total[2] += too_large
    folded = [{"run_id": run_id, "status": status, "rows": rows, "sent": sent,
               "too_large": too_large}
              for (run_id, status), (rows, sent, too_large) in sorted(sums.items())
              if rows or sent or too_large]
    if folded:
        session.execute(insert(DeliveryCount), folded)
    return len(removed)


__all__ = ["KindCount", "fold", "kind_counts", "runs_counts"]
