"""bench/sources.py still runs end to end (tiny sizes), and its passes mean what it says: the
baseline reads every body again, the conditional pass is one 304 per source."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_sources_benchmark_polls_in_full_then_conditionally_with_one_304_per_source():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sources.py"), "--sources", "6",
                           "--items", "3", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    first, baseline, conditional = (report["passes"][name]
                                    for name in ("first", "baseline", "conditional"))
    assert report["cores"] >= 1
    assert first["new_items"] == 18 and first["requests"] == 6 and first["failed"] == 0
    assert baseline["requests"] == 6 and baseline["bytes"] == first["bytes"] > 0
    assert baseline["new_items"] == 0
    assert conditional == {**conditional, "requests": 6, "not_modified": 6, "bytes": 0,
                           "new_items": 0, "failed": 0}
    assert report["conditional_vs_baseline"]["bytes"] == 0
