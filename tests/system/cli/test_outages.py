"""Database and broker outages end a CLI command in one line and exit code 1, never a
traceback (issue 15, defect 8). The CLI runs as a process; the servers it cannot reach are a
PostgreSQL of the test's own, stopped, and a port of the spare range nothing listens on."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from digest.models import utcnow
from tests.factories import make_item, make_subscriber
from tests.ownservers import OwnPostgres, spare_port


def run_cli(tmp_path, url: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(DIGEST_DATABASE_URL=url, DIGEST_VAR_DIR=str(tmp_path / "var"), COLUMNS="250",
               DIGEST_SECRET_KEY="outage-test-secret-0123456789abcdef",
               DIGEST_PUBLIC_BASE_URL="https://digest.example.org", **extra)
    return subprocess.run([sys.executable, "-m", "digest.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def stopped_postgres():
    server = OwnPostgres().start()
    server.stop()
    yield server
    server.remove()


@pytest.mark.parametrize("command", [["subscribers", "list"], ["send", "weekly", "--now"],
                                     ["deliveries"]])
def test_a_stopped_database_ends_the_command_in_one_line(tmp_path, stopped_postgres, command):
    result = run_cli(tmp_path, stopped_postgres.url, *command, DIGEST_DB_WAIT_SECONDS="0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"digest: the database at 127.0.0.1:{stopped_postgres.port} is unreachable (")
    assert lines[0].endswith("); is PostgreSQL running?")


def test_an_unreachable_broker_ends_the_command_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli(tmp_path, url, "db", "upgrade").returncode == 0
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(url)
    with Session(engine) as s:
        make_item(s, "news", ingested_at=utcnow() - timedelta(hours=1))
        make_subscriber(s, "a@example.org")
        s.commit()
    engine.dispose()
    port = spare_port()
    result = run_cli(tmp_path, url, "send", "weekly", "--now",
                     DIGEST_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"digest: the broker at 127.0.0.1:{port} is unreachable")


def test_a_send_waits_for_a_database_out_of_connection_slots_and_then_plans(tmp_path):
    """Every slot taken (the fault campaign's pg-slots-at-send): the command waits, says so,
    and plans once slots free up, so no operator has to run it again."""
    import psycopg

    server = OwnPostgres().start()
    held: list = []
    try:
        assert run_cli(tmp_path, server.url, "db", "upgrade").returncode == 0
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session

        engine = create_engine(server.url)
        with Session(engine) as s:
            make_item(s, "news", ingested_at=utcnow() - timedelta(hours=1))
            make_subscriber(s, "a@example.org")
            s.commit()
        engine.dispose()
        dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
        while True:  # as the superuser: the reserved slots too
            try:
                held.append(psycopg.connect(dsn))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc)
                break
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env.update(DIGEST_DATABASE_URL=server.url, DIGEST_VAR_DIR=str(tmp_path / "var"),
                   DIGEST_SECRET_KEY="outage-test-secret-0123456789abcdef",
                   DIGEST_PUBLIC_BASE_URL="https://digest.example.org",
                   DIGEST_DB_WAIT_SECONDS="120")
        command = subprocess.Popen(
            [sys.executable, "-m", "digest.cli", "send", "weekly", "--now", "--dry-run"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = command.stderr.readline()  # blocks until the command reports its wait
        assert first.startswith("waiting for the database (") and "too many clients" in first
        assert command.poll() is None
        for conn in held:
            conn.close()
        held.clear()
        out, errors = command.communicate(timeout=120)
        assert command.returncode == 0, first + errors
        assert "would send 1 digest(s)" in out, out
    finally:
        for conn in held:
            conn.close()
        server.remove()
