"""The operator's CLI, run as a real process: one-line errors, exit codes, the demo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, func, select, text

from digest.models import Delivery, Item
from tests.conftest import ROOT, TEST_DATA

DATA = TEST_DATA


@pytest.fixture
def cli(tmp_path):
    """Run ``digest ...`` in a clean environment with its own SQLite database."""
    db_path = tmp_path / "var" / "digest.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(DIGEST_DATABASE_URL=f"sqlite:///{db_path}", DIGEST_VAR_DIR=str(tmp_path / "var"),
               COLUMNS="200")

    def run(*args: str, input: str | None = None, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "digest.cli", *args], cwd=tmp_path,
                              env=env | {f"DIGEST_{k.upper()}": v for k, v in extra_env.items()},
                              capture_output=True, text=True, input=input, timeout=120)

    run.db_url = f"sqlite:///{db_path}"
    run.tmp = tmp_path
    return run


def count(url: str, model) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(model))
    finally:
        engine.dispose()


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unreadable_listing_is_a_one_line_error(cli):
    proc = cli("ingest", "listing", "no-such-file.txt")
    assert_one_line_error(proc, "no-such-file.txt")


def test_malformed_feed_is_a_one_line_error_and_writes_nothing(cli):
    proc = cli("ingest", "feed", str(DATA / "ingest-malformed.rss"))
    assert_one_line_error(proc, "malformed feed")
    assert count(cli.db_url, Item) == 0


def test_listing_ingest_reports_counts(cli):
    proc = cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"))
    assert proc.returncode == 0, proc.stderr
    assert "18 new" in proc.stdout
    again = cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"))
    assert "0 new" in again.stdout and count(cli.db_url, Item) == 18


def test_invalid_address_is_refused(cli):
    assert_one_line_error(cli("subscribers", "add", "not-an-address"), "not-an-address")


def test_unknown_option_values_name_the_valid_ones(cli):
    assert_one_line_error(cli("subscribers", "add", "a@example.org", "--frequency", "hourly"),
                          "immediate, daily, weekly")
    assert_one_line_error(cli("subscribers", "add", "a@example.org", "--timezone", "Mars/Olympus"),
                          "Mars/Olympus")
    assert_one_line_error(cli("subscribers", "add", "a@example.org", "--theme", "Astrology"),
                          "unknown theme: Astrology")
    assert_one_line_error(cli("send", "weekly", "--as-of", "next tuesday"), "YYYY-MM-DD")
    assert_one_line_error(cli("deliveries", "--status", "lost"), "pending")


def test_csv_import_reports_bad_rows_by_line_and_is_idempotent(cli):
    csv_path = cli.tmp / "subs.csv"
    csv_path.write_text("email,frequency,timezone\nok@example.org,weekly,Europe/Vienna\n"
                        "broken,weekly,UTC\nok2@example.org,hourly,UTC\n", encoding="utf-8")
    first = cli("subscribers", "import", str(csv_path))
    assert first.returncode == 1
    assert "line 3:" in first.stderr and "line 4:" in first.stderr
    assert "1 added, 0 updated, 2 rejected" in first.stdout
    second = cli("subscribers", "import", str(csv_path))
    assert "0 added, 1 updated, 2 rejected" in second.stdout


def test_adhoc_dry_run_counts_sends_nothing_and_can_be_previewed(cli):
    cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"))
    assert cli("subscribers", "add", "p@example.org", "--theme", "Policing").returncode == 0
    proc = cli("send", "adhoc", "--theme", "Policing", "--from", "2025-09-01", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would send 1 digest(s)" in proc.stdout and "nothing was sent" in proc.stdout
    engine = create_engine(cli.db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("select id, status, attempts from deliveries")).all()
    engine.dispose()
    [(delivery_id, status, attempts)] = rows
    assert (status, attempts) == ("dry_run", 0)
    assert f"digest preview --delivery {delivery_id}" in proc.stdout

    shown = cli("preview", "--delivery", str(delivery_id))
    assert shown.returncode == 0, shown.stderr
    html = (cli.tmp / f"var/preview/delivery-{delivery_id}.html").read_text()
    txt = (cli.tmp / f"var/preview/delivery-{delivery_id}.txt").read_text()
    assert "<html" in html and "Policing" in txt and "subject: " in shown.stdout
    assert_one_line_error(cli("preview"), "one of the two")
    assert_one_line_error(cli("preview", "p@example.org", "--delivery", "1"), "one of the two")
    assert_one_line_error(cli("preview", "--delivery", "999"), "no delivery 999")


def test_preview_writes_html_and_text_and_sends_nothing(cli):
    # The 2025 listing is older than the default maximum age today: allow it for this test.
    cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt"),
        max_item_age_days="100000")
    cli("subscribers", "add", "p@example.org", "--theme", "Policing")
    proc = cli("preview", "p@example.org")
    assert proc.returncode == 0, proc.stderr
    html = (cli.tmp / "var/preview/p_at_example.org.html").read_text()
    txt = (cli.tmp / "var/preview/p_at_example.org.txt").read_text()
    assert "<html" in html and "Policing" in txt
    assert count(cli.db_url, Delivery) == 0


def test_demo_delivers_over_smtp_then_sends_nothing_the_second_time(cli):
    first = cli("demo", "--var", "var")
    assert first.returncode == 0, first.stderr
    assert "18 new" in first.stdout
    assert first.stdout.count(" sent ") >= 5 and "skipped" not in first.stdout
    outbox = cli.tmp / "var" / "outbox"
    emls = sorted(outbox.glob("*.eml"))
    htmls = sorted(outbox.glob("*.html"))
    assert len(emls) >= 5 and len(htmls) == len(emls)
    for html in htmls:
        assert str(html.relative_to(cli.tmp)) in first.stdout
    second = cli("demo", "--var", "var")
    assert second.returncode == 0, second.stderr
    assert "Nothing new to send" in second.stdout
    assert sorted(outbox.glob("*.eml")) == emls
    engine = create_engine(cli.db_url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("select status, count(*) from deliveries group by status")).all())
    engine.dispose()
    assert set(statuses) == {"sent"}


# --- domains paused after a policy refusal -----------------------------------------------------

def test_domains_paused_lists_active_pauses_and_resume_lifts_one(cli):
    from datetime import timedelta

    from sqlalchemy.orm import Session

    from digest.models import DigestRun, DomainPause, Subscriber, utcnow

    assert cli("db", "upgrade").returncode == 0
    empty = cli("domains", "paused")
    assert empty.returncode == 0 and "no domain is paused" in empty.stdout
    reason = "550 5.7.1 [internal] client host blocked using Spamhaus"
    now = utcnow()
    until = now + timedelta(minutes=45)
    engine = create_engine(cli.db_url)
    with Session(engine) as s:
        sub = Subscriber(email="a1@blocked.example")
        run = DigestRun(kind="weekly", slot_key="weekly:test", cutoff=now)
        s.add_all([sub, run])
        s.flush()
        waiting = Delivery(run_id=run.id, subscriber_id=sub.id, email=sub.email,
                           status="deferred", attempts=1, next_attempt_at=until)
        s.add(waiting)
        s.flush()
        s.add_all([
            DomainPause(domain="blocked.example", paused_until=until, reason=reason,
                        delivery_id=waiting.id, created_at=now),
            DomainPause(domain="over.example", paused_until=now - timedelta(hours=1),
                        reason="550 5.7.1 long ago", created_at=now - timedelta(hours=2)),
        ])
        s.commit()
        waiting_id = waiting.id

    listed = cli("domains", "paused")
    assert listed.returncode == 0, listed.stderr
    assert "blocked.example" in listed.stdout and reason in listed.stdout
    assert f"{until:%Y-%m-%d %H:%M:%S}" in listed.stdout
    assert "over.example" not in listed.stdout  # ran out: not paused any more

    resumed = cli("domains", "resume", "Blocked.Example")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed blocked.example: 1 waiting delivery due now" in resumed.stdout
    with Session(engine) as s:
        assert s.get(DomainPause, "blocked.example") is None
        assert s.get(Delivery, waiting_id).next_attempt_at <= utcnow()
    engine.dispose()
    assert "no domain is paused" in cli("domains", "paused").stdout

    unknown = cli("domains", "resume", "blocked.example")
    assert unknown.returncode == 1
    assert_one_line_error(unknown, "'blocked.example' is not paused", "digest domains paused")


def test_deliveries_watch_follows_a_run_until_it_finishes(cli):
    import threading
    import time

    assert cli("demo", "--var", "var").returncode == 0
    done = cli("deliveries", "--watch")
    assert done.returncode == 0, done.stderr
    assert "finished: " in done.stdout and "sent " in done.stdout

    engine = create_engine(cli.db_url)
    with engine.begin() as conn:
        run_id, delivery_id = conn.execute(text(
            "select run_id, id from deliveries where status = 'sent' order by id limit 1")).one()
        conn.execute(text("update deliveries set status = 'deferred' where id = :id"),
                     {"id": delivery_id})
    waiting = cli("deliveries", "--watch", "--run", str(run_id), "--timeout", "1",
                  "--interval", "0.2")
    assert_one_line_error(waiting, f"run {run_id} has not finished", "deferred 1")

    def finish_later():
        time.sleep(1.5)
        with engine.begin() as conn:
            conn.execute(text("update deliveries set status = 'sent' where id = :id"),
                         {"id": delivery_id})

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    started = time.monotonic()
    followed = cli("deliveries", "--watch", "--run", str(run_id), "--timeout", "30",
                   "--interval", "0.2")
    finisher.join()
    engine.dispose()
    assert followed.returncode == 0, followed.stderr
    assert time.monotonic() - started >= 1.5  # it waited for the row, it did not just exit
    assert f"run {run_id} finished" in followed.stdout and "deferred" not in followed.stdout
    assert_one_line_error(cli("deliveries", "--watch", "--run", "9999"), "no run with id 9999")


def test_subscribers_unsubscribe_suppress_and_erase_from_the_cli(cli):
    assert cli("subscribers", "add", "ann@example.org", "--theme", "Policing",
               "--create-taxonomy").returncode == 0
    assert cli("subscribers", "add", "bob@example.org").returncode == 0

    def status(address):
        engine = create_engine(cli.db_url)
        with engine.connect() as conn:
            found = conn.execute(text("select status from subscribers where email = :e"),
                                 {"e": address}).scalar()
        engine.dispose()
        return found

    done = cli("subscribers", "unsubscribe", "ANN@example.org")
    assert done.returncode == 0 and "unsubscribed ann@example.org" in done.stdout
    assert status("ann@example.org") == "unsubscribed"
    assert cli("subscribers", "suppress", "bob@example.org", "--note", "asked by phone").returncode == 0
    assert status("bob@example.org") == "suppressed"
    assert cli("subscribers", "unsuppress", "bob@example.org").returncode == 0
    assert status("bob@example.org") == "active"
    assert_one_line_error(cli("subscribers", "unsuppress", "bob@example.org"), "is not suppressed")

    refused = cli("subscribers", "erase", "ann@example.org", input="n\n")
    assert refused.returncode == 1 and status("ann@example.org") == "unsubscribed"
    erased = cli("subscribers", "erase", "ann@example.org", "--yes")
    assert erased.returncode == 0, erased.stderr
    assert "erased ann@example.org: 0 deliveries, 0 bounce report(s)" in erased.stdout
    assert status("ann@example.org") is None and status("bob@example.org") == "active"
    assert_one_line_error(cli("subscribers", "erase", "ann@example.org", "--yes"),
                          "no subscriber ann@example.org")
    assert_one_line_error(cli("subscribers", "suppress", "not-an-address"), "not-an-address")
