"""The benchmark scripts still run end to end (tiny sizes): a figure in the README must come
from a script that works with today's code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PG_ADMIN_URL, ROOT

BENCH = ROOT / "bench"


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=BENCH.parent, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.integration
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_pipeline_benchmark_runs_every_step_and_agrees_with_the_baseline(database):
    extra = ["--database-url", PG_ADMIN_URL] if database == "postgresql" else []
    out = run(str(BENCH / "pipeline.py"), "--subscribers", "40", "--items", "15",
              "--processes", "2", *extra)
    assert "os.cpu_count()=" in out
    for step in ("baseline:", "select:", "load:", "render:", "send:",
                 "together: send_deliveries, 1 process", "together: send_deliveries, 2 processes"):
        assert step in out, step
    assert "STOPPED" not in out and "MISMATCH" not in out
    assert "pick the same items for all" in out


def test_render_benchmark_runs_and_compares_with_its_baseline():
    out = run(str(BENCH / "render.py"), "--messages", "5", "--items", "3")
    assert "cpus=" in out and "(a)  MJML once, item blocks once" in out
    assert "(a0) MJML once, every block every message" in out and "(b)  Jinja + mjml2html" in out
