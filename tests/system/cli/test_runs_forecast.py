"""``digest send ... --dry-run`` prints the forecast; ``digest runs`` lists counts;
``digest runs resend-failed`` refuses what it cannot resend in one line (a real process)."""

from __future__ import annotations

from digest.devtools import MailSink
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
    assert "estimate: 2 s, at the rate limit (DIGEST_SEND_RATE=0.5/s; no measured rate yet" in (
        proc.stdout)

    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    for column in ("planned", "sent", "deferred", "failed", "skipped", "cancelled", "finished"):
        assert column in listed.stdout
    forecast = cli("runs", "forecast", "1")
    assert forecast.returncode == 0 and "messages: 1" in forecast.stdout

    assert_one_line_error(cli("runs", "resend-failed", "1"), "dry run: it sent nothing")
    assert_one_line_error(cli("runs", "resend-failed", "99"), "no run with id 99")
    assert_one_line_error(cli("runs", "forecast", "99"), "no run with id 99")


def test_runs_folds_the_empty_slots_and_all_shows_them(cli):
    """The beat plans every hour's slot; most come to nothing and hid the real runs."""
    cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"))
    assert cli("subscribers", "add", "p@example.org", "--theme", "Policing",
               "--weekday", "0", "--hour", "8").returncode == 0
    # A Sunday's slots: the reader's day is Monday. Each call plans that hour's slot and the
    # ones missed since the last one planned.
    for hour in ("10", "14"):
        assert cli("send", "weekly", "--as-of", f"2025-10-12T{hour}:00:00+00:00").returncode == 0
    dry = cli("send", "adhoc", "--theme", "Policing", "--from", "2025-09-01", "--dry-run")
    assert dry.returncode == 0, dry.stderr

    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    assert "weekly:2025-10-12T1" not in listed.stdout and "dry run" in listed.stdout
    assert "5 empty run(s) hidden (finished with nothing to send: slots nobody was due in); " \
           "--all shows them" in listed.stdout
    everything = cli("runs", "--all")
    assert "weekly:2025-10-12T10" in everything.stdout
    assert "weekly:2025-10-12T14" in everything.stdout
    assert "empty run(s) hidden" not in everything.stdout


def test_the_forecast_of_a_finished_run_says_what_happened_not_that_everyone_was_skipped(cli):
    cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"))
    assert cli("subscribers", "add", "p@example.org", "--theme", "Policing").returncode == 0
    with MailSink() as sink:
        smtp = {"smtp_host": sink.host, "smtp_port": str(sink.port)}
        sent = cli("send", "adhoc", "--theme", "Policing", "--from", "2025-09-01", **smtp)
        assert sent.returncode == 0, sent.stderr
        sink.wait_for(1)
    forecast = cli("runs", "forecast", "1")
    assert forecast.returncode == 0, forecast.stderr
    assert "what run #1 came to:" in forecast.stdout
    assert "finished (done): sent 1, failed 0, skipped 0 (nothing new), cancelled 0" in (
        forecast.stdout)
    assert "sending took" in forecast.stdout and "with nothing new, skipped" not in forecast.stdout
