"""The fault campaign still runs end to end at a tiny size: its own PostgreSQL, Redis, two
Celery workers, a beat and the faulty SMTP server, two rounds with two kinds of fault."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "faults.py"


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_fault_campaign_loses_nothing_through_a_killed_worker_and_an_unsubscribe():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "2", "--subscribers", "60", "--batch-size", "20",
         "--faults", "kill-worker,unsubscribe", "--timeout", "120", "--final-wait", "0",
         "--max-seconds", "170", "--no-keep"],
        cwd=SCRIPT.parents[1], capture_output=True, text=True, timeout=175)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "os.cpu_count()=" in out
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                      r"(\d+)\s+(\d+)\s+[\d.]+\s+(kill-worker|unsubscribe): ", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"], out
    for _round, planned, sent, failed, lost, _dups, non_final, unsub, wrong, oper, _kind in rows:
        assert int(planned) >= 55 and int(sent) + int(failed) <= int(planned)
        assert (lost, non_final, unsub, wrong, oper) == ("0", "0", "0", "0", "0"), out
    assert re.search(r"^\s+kill-worker\s+1\s+\d+\s+0\s+\d+", out, re.M), out  # per kind
    assert re.search(r"^\s+total\s+\d+", out, re.M), out
    assert "duplicate window:" in out and "result: no loss" in out


def test_fault_campaign_refuses_an_unknown_fault_kind_without_starting_anything():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--faults", "kill-worker,flood"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown fault kind(s) flood" in proc.stderr and "Traceback" not in proc.stderr
