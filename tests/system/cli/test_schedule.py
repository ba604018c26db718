"""digest runs as a process: missed slots planned, held runs listed, released or cancelled."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.factories import T0, make_item, make_subscriber

# --- the operator's commands, as a real process ----------------------------------------------

@pytest.fixture
def digest_cli(tmp_path, smtp_sink):
    """``digest ...`` in its own process, on its own SQLite file, sending to ``smtp_sink``."""
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(DIGEST_DATABASE_URL=url, DIGEST_VAR_DIR=str(tmp_path / "cli-var"),
               DIGEST_SECRET_KEY="a-test-secret-key-of-32-characters-or-more",
               DIGEST_SMTP_HOST=smtp_sink.host, DIGEST_SMTP_PORT=str(smtp_sink.port),
               DIGEST_CATCH_UP_HOURS="72", COLUMNS="250")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "digest.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    run.url = url
    return run


def test_the_cli_plans_missed_slots_lists_held_runs_and_releases_or_cancels_them(
        digest_cli, smtp_sink):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    assert digest_cli("db", "upgrade").returncode == 0
    engine = create_engine(digest_cli.url)
    with Session(engine) as s:
        make_item(s, "news", ingested_at=T0 - timedelta(days=1))
        make_subscriber(s, "nine@example.org", weekday=0, hour=9)
        make_subscriber(s, "ten@example.org", weekday=0, hour=10)
        s.commit()

    first = digest_cli("send", "weekly", "--as-of", T0.isoformat())
    assert first.returncode == 0, first.stderr
    assert "slot 2025-10-13 07:00 UTC: run #1: sending 0 digest(s)" in first.stdout
    # Two days later (the beat was down): 47 missed slots; Monday 09:00 and 10:00 are held.
    later = digest_cli("send", "weekly", "--as-of", (T0 + timedelta(days=2)).isoformat())
    assert later.returncode == 0, later.stderr
    lines = later.stdout.splitlines()
    assert len(lines) == 48 and lines[-1].startswith("slot 2025-10-15 07:00 UTC")
    held = [line for line in lines if " held: " in line]
    assert [line[:26] for line in held] == ["slot 2025-10-13 09:00 UTC:",
                                            "slot 2025-10-13 10:00 UTC:"]
    nine, ten = (re.search(r"run #(\d+) held: 1 digest\(s\)", line).group(1) for line in held)
    assert f"'digest runs release {nine}'" in held[0] and f"'digest runs cancel {ten}'" in held[1]
    assert smtp_sink.messages == []

    listed = digest_cli("runs", "--status", "held")
    assert listed.returncode == 0, listed.stderr
    assert "weekly:2025-10-13T09" in listed.stdout and "weekly:2025-10-13T10" in listed.stdout
    assert "weekly:2025-10-13T08" not in listed.stdout

    released = digest_cli("runs", "release", nine)
    assert released.returncode == 0, released.stderr
    assert f"run #{nine} released: sending 1 digest(s)" in released.stdout
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["nine@example.org"]]

    cancelled = digest_cli("runs", "cancel", ten, "--yes")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"run #{ten} cancelled: 1 digest(s) will not go out; 1 item(s)" in cancelled.stdout
    again = digest_cli("runs", "release", ten)
    assert again.returncode == 1 and again.stderr.startswith(f"error: run {ten} is cancelled")
    assert "Traceback" not in again.stderr
    missing = digest_cli("runs", "cancel", "99", "--yes")
    assert missing.returncode == 1 and "no run with id 99" in missing.stderr
    everything = digest_cli("runs", "--limit", "100")
    assert everything.returncode == 0 and "cancelled" in everything.stdout
    assert len(smtp_sink.messages) == 1
    engine.dispose()
