"""``digest prune [--dry-run]``: the delivery log, pruned as far as is safe."""

from __future__ import annotations

import typer

from digest.cli._common import console, ensure_db, session_scope
from digest.settings import get_settings


def prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
    batch_size: int = typer.Option(1000, min=1, help="Deliveries deleted per transaction."),
) -> None:
    """Delete final deliveries older than DIGEST_RETENTION_DAYS (only those whose claimed items
    no future digest could pick again) and the runs left empty; report the counts."""
    from digest.delivery.retention import prune as prune_log

    ensure_db()
    settings = get_settings()
    with session_scope() as session:
        report = prune_log(session, settings, dry_run=dry_run, batch_size=batch_size)
    verb = "would delete" if dry_run else "deleted"
    assert report.retention_cutoff is not None and report.ledger_cutoff is not None
    console.print(
        f"{verb}: {report.deliveries} deliveries (carrying {report.ledger_rows} claimed and "
        f"{report.delivery_items} unclaimed items), {report.bounces} bounce reports, "
        f"{report.runs} empty runs "
        f"(deliveries before {report.retention_cutoff:%Y-%m-%d %H:%M} UTC; claims of "
        f"items ingested before {report.ledger_cutoff:%Y-%m-%d %H:%M} UTC and each reader's "
        f"watermark)", markup=False, highlight=False)
    if report.kept_for_ledger:
        console.print(f"kept: {report.kept_for_ledger} old deliveries whose claims a future "
                      "digest still needs (a reader's watermark or an unfinished run)",
                      markup=False, highlight=False)
