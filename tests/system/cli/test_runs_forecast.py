"""``digest send ... --dry-run`` prints the forecast; ``digest runs`` lists counts;
``digest runs resend-failed`` refuses what it cannot resend in one line (a real process)."""

from __future__ import annotations

from tests.conftest import ROOT
from tests.system.cli.test_cli import assert_one_line_error, cli  # noqa: F401 (fixture)


def test_a_dry_run_prints_its_forecast_and_runs_lists_its_counts(cli):
    cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"))
    assert cli("subscribers", "add", "p@example.org", "--theme", "Policing").returncode == 0
    proc = cli("send", "adhoc", "--theme", "Policing", "--from", "2025-09-01", "--dry-run",
               send_rate="0.5")
    assert proc.returncode == 0, proc.stderr
    assert "forecast of run #1:" in proc.stdout and "messages: 1" in proc.stdout
    assert "average size:" in proc.stdout and "(of 1 built)" in proc.stdout
    assert "at the rate limit (DIGEST_SEND_RATE=0.5/s): 2 s" in proc.stdout
    assert "nothing sent recently to measure" in proc.stdout

    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    for column in ("planned", "sent", "deferred", "failed", "skipped", "cancelled", "finished"):
        assert column in listed.stdout
    forecast = cli("runs", "forecast", "1")
    assert forecast.returncode == 0 and "messages: 1" in forecast.stdout

    assert_one_line_error(cli("runs", "resend-failed", "1"), "dry run: it sent nothing")
    assert_one_line_error(cli("runs", "resend-failed", "99"), "no run with id 99")
    assert_one_line_error(cli("runs", "forecast", "99"), "no run with id 99")
