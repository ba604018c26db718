"""digest bounces as a process: a maildir processed, a dry run, an unreadable mailbox."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from digest.models import (
    Bounce,
    Delivery,
    DomainPause,
    Subscriber,
    Suppression,
)
from tests.bounce_reports import DATA, HARD_5_1_1, sample, seed_sample_deliveries

# --- the CLI, as a real process ------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    db_path = tmp_path / "var" / "digest.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(DIGEST_DATABASE_URL=f"sqlite:///{db_path}", DIGEST_VAR_DIR=str(tmp_path / "var"),
               COLUMNS="200")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "digest.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    run.db_url = f"sqlite:///{db_path}"
    return run


def test_cli_processes_a_maildir_and_prints_the_report(cli):
    assert cli("db", "upgrade").returncode == 0
    engine = create_engine(cli.db_url)
    with Session(engine) as session:
        seed_sample_deliveries(session)
    proc = cli("bounces", "process", str(DATA / "maildir"))
    assert proc.returncode == 0, proc.stderr
    assert "5 message(s): 2 hard, 0 soft, 1 policy, 0 about our sender, 2 unmatched" in proc.stdout
    assert "policy rejection (not suppressed): strict@example.org delivery #103 5.7.1" in proc.stdout
    assert "suppressed: gone@example.net" in proc.stdout
    again = cli("bounces", "process", str(DATA / "bounces.mbox"), "--format", "mbox")
    assert again.returncode == 0 and "3 already processed" in again.stdout
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Bounce)) == 3
    engine.dispose()


def test_cli_dry_run_json_prints_one_object_per_message_and_changes_nothing(cli, tmp_path):
    import json

    assert cli("db", "upgrade").returncode == 0
    engine = create_engine(cli.db_url)
    with Session(engine) as session:
        seed_sample_deliveries(session)

    def snapshot():
        with Session(engine) as session:
            return (session.scalar(select(func.count()).select_from(Bounce)),
                    session.scalar(select(func.count()).select_from(Suppression)),
                    session.scalar(select(func.count()).select_from(DomainPause)),
                    sorted(session.execute(select(Delivery.id, Delivery.status)).all()),
                    sorted(session.execute(select(Subscriber.email, Subscriber.status,
                                                  Subscriber.soft_bounces)).all()))

    before = snapshot()
    proc = cli("bounces", "process", str(DATA / "bounces.mbox"), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["source"] for line in lines] == [f"bounces.mbox#{n}" for n in range(1, 6)]
    by_address = {r["address"]: (r["status"], r["class"], line["action"])
                  for line in lines for r in line.get("recipients", [])}
    assert by_address["gone@example.net"][:2] == ("5.1.1", "hard")
    assert "would suppress gone@example.net" in by_address["gone@example.net"][2]
    assert by_address["strict@example.org"][:2] == ("5.7.1", "policy")
    assert "would pause example.org" in by_address["strict@example.org"][2]
    assert by_address["full@example.com"][1] == "none"
    assert snapshot() == before
    # A damaged message and a single message file: the error form, in words, exit 1.
    boundary = HARD_5_1_1.read_text().split('boundary="')[1].split('"')[0]
    damaged = tmp_path / "damaged.eml"
    damaged.write_bytes(sample(HARD_5_1_1, **{f'boundary="{boundary}"': 'boundary="x"'}))
    proc = cli("bounces", "process", str(damaged), "--dry-run", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {
        "source": "damaged.eml",
        "error": "the message's MIME boundary does not match its body (damaged or truncated in "
                 "transit), so its parts cannot be read; it was not processed"}
    assert snapshot() == before
    engine.dispose()


@pytest.mark.parametrize(("args", "fragment"), [
    (("no-such-mailbox",), "cannot read no-such-mailbox: no such file or folder"),
    ((str(DATA / "maildir"), "--format", "mbox"), "is a folder, not an mbox or message file"),
    ((str(DATA / "maildir"), "--format", "eml"), "bad format 'eml'"),
])
def test_cli_unreadable_mailbox_is_a_one_line_error(cli, args, fragment):
    proc = cli("bounces", "process", *args)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


def test_cli_deliveries_shows_the_servers_reply_and_our_note_apart(cli):
    assert cli("db", "upgrade").returncode == 0
    engine = create_engine(cli.db_url)
    with Session(engine) as session:
        seed_sample_deliveries(session)
    engine.dispose()
    assert cli("bounces", "process", str(DATA / "maildir")).returncode == 0
    proc = cli("deliveries", "--run", "7", "--status", "failed")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "SMTP reply" in line)
    assert "note" in header
    # The send's 250 stays the reply; the bounce is our note, in its own column.
    row = next(line for line in proc.stdout.splitlines() if "gone@example.net" in line)
    assert "250 2.0.0 OK: queued as 1" in row and "bounced after it was" in row
