"""bench/stack.py still runs end to end at a tiny size: its own database, Redis, a Celery
worker and Postfix's smtp-sink, DKIM on; and ``--plan-only`` without a worker. Its ``--json``
line carries the figures the README quotes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, ROOT

SCRIPT = ROOT / "bench" / "stack.py"
SINK = shutil.which("smtp-sink") or next(
    (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink") if Path(p).exists()),
    None)


def run(*args: str, timeout: float = 240) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--items", "15",
                           "--database-url", PG_ADMIN_URL, "--json", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "load average (1, 5, 15 min) at the start:" in proc.stdout
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_plan_only_reports_planning_bytes_per_delivery_and_planner_rss_without_a_worker():
    figures = run("--subscribers", "60", "--plan-only")["by_subscribers"]["60"]
    assert figures["plan_only"] and figures["sent"] == 0
    assert figures["planned"] == 60 and figures["claimed_when_command_exited"] == 0
    assert figures["planner_peak_rss_mb"] > 20 and figures["planning_us_per_reader"] > 0
    assert figures["bytes_per_delivery"] > 0 and "deliveries" in figures["bytes_grown_by_table"]


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("redis-server") or SINK is None,
                    reason="needs redis-server and Postfix's smtp-sink")
def test_a_dkim_signed_run_sends_every_message_and_measures_the_window_and_the_ceiling():
    out = run("--subscribers", "40", "--ceiling-connections", "2", "--concurrency", "1")
    figures = out["by_subscribers"]["40"]
    assert out["dkim"] and figures["signed_share"] == 1.0
    assert figures["sent"] > 0 and figures["sink_received"] == figures["sent"]
    assert figures["sent"] + figures["skipped"] == figures["planned"] == 40
    assert 0 < figures["window_s"] <= figures["e2e_s"] and figures["ceiling_msg_s"] > 0
    assert figures["worker_cpu_ms_per_msg"] > 0 and figures["worker_peak_rss_mb"] > 0
    assert figures["bytes_per_delivery_after_run"] >= figures["bytes_per_delivery"] > 0
