"""digest prune as a process: counts with --dry-run, then deletes; bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import Session

from digest.models import Delivery, DeliveryStatus, DigestRun, RunStatus, utcnow
from tests.factories import make_item, make_subscriber


def run_cli(tmp_path, url, *args, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(DIGEST_DATABASE_URL=url, DIGEST_VAR_DIR=str(tmp_path / "var"), COLUMNS="250",
               **extra)
    return subprocess.run([sys.executable, "-m", "digest.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_prune_dry_run_reports_counts_and_prune_deletes_old_deliveries(tmp_path):
    from digest.selection import plan_adhoc_run
    from digest.selection.planning import AdhocQuery

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli(tmp_path, url, "db", "upgrade").returncode == 0
    engine = create_engine(url)
    with Session(engine) as s:
        make_item(s, "news", ingested_at=utcnow() - timedelta(days=200))
        make_subscriber(s, "a@example.org")
        s.commit()
        plan_adhoc_run(s, AdhocQuery(), slot_key="old send")
        plan_adhoc_run(s, AdhocQuery(), slot_key="newest send")
        s.execute(update(Delivery).values(status=DeliveryStatus.sent,
                                          created_at=utcnow() - timedelta(days=120)))
        s.execute(update(DigestRun).values(status=RunStatus.done,
                                           created_at=utcnow() - timedelta(days=120)))
        s.commit()

    # Both sends claimed what they carry (rule H3; the second repeated the item): two claimed
    # items, both safe to forget (the item is long past).
    dry = run_cli(tmp_path, url, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete: 2 deliveries (carrying 2 claimed and 0 unclaimed items), 0 bounce reports, 1 empty runs" in dry.stdout
    real = run_cli(tmp_path, url, "prune")
    assert real.returncode == 0, real.stderr
    assert "deleted: 2 deliveries (carrying 2 claimed and 0 unclaimed items), 0 bounce reports, 1 empty runs" in real.stdout
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.scalar(select(func.count()).select_from(DigestRun)) == 1  # the newest stays


def test_prune_refuses_a_bad_retention_setting_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    proc = run_cli(tmp_path, url, "prune", DIGEST_RETENTION_DAYS="0")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "RETENTION_DAYS" in proc.stderr.upper()
    assert "Traceback" not in proc.stderr
    bad = run_cli(tmp_path, url, "prune", "--batch-size", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
