"""digest bounces with complaints, as a process: a feedback loop's mbox processed (a dry run
with --json first), then listed by `digest bounces complaints`."""

from __future__ import annotations

import json

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.bounce_reports import seed_sample_deliveries
from tests.conftest import TEST_DATA
from tests.system.cli.test_bounces import cli  # noqa: F401 (the fixture)

COMPLAINTS = TEST_DATA / "complaints"


def test_cli_reports_complaints_as_a_dry_run_then_suppresses_and_lists_them(cli, tmp_path):
    assert cli("db", "upgrade").returncode == 0
    engine = create_engine(cli.db_url)
    with Session(engine) as session:
        seed_sample_deliveries(session)
    engine.dispose()
    box = tmp_path / "fbl.mbox"
    box.write_text("".join(f"From feedback Mon Oct 13 09:14:02 2025\n{(COMPLAINTS / n).read_text()}\n"
                           for n in ("yahoo-cfl-abuse.eml", "aol-scomp-abuse.eml")))
    dry = cli("bounces", "process", str(box), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    assert [(x["address"], x["class"]) for x in lines] == [
        ("gone@example.net", "complaint"), ("strict@example.org", "complaint")]
    assert lines[0]["action"].startswith("delivery #101: would suppress gone@example.net")
    done = cli("bounces", "process", str(box))
    assert done.returncode == 0, done.stderr
    assert "complaint: gone@example.net delivery #101" in done.stdout
    assert "2 complaint(s)" in done.stdout and "suppressed: strict@example.org" in done.stdout
    listed = cli("bounces", "complaints", "--json")
    assert [json.loads(x)["address"] for x in listed.stdout.splitlines()] == [
        "strict@example.org", "gone@example.net"]
    assert "gone@example.net  arf abuse  delivery #101" in cli("bounces", "complaints").stdout
