"""The operator's commands keep the promise's rules, run as real processes: `subscribers add`
never re-subscribes silently (R2, R5), `subscribers import` prints what it skipped (I2),
`taxonomy seed|list` (a fresh install can add a filtered reader before any ingest), `ingest
feed` warns about categories it could not file, `tick` does the beat's work in-process (N3)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from digest.devtools import MailSink
from digest.models import utcnow
from tests.system.cli.test_cli import assert_one_line_error, cli  # noqa: F401 (fixture)


def query(url: str, sql: str, **params):
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()


def status(cli, address: str) -> str | None:
    rows = query(cli.db_url, "select status from subscribers where email = :e", e=address)
    return rows[0][0] if rows else None


def test_add_of_a_suppressed_address_is_refused_saying_so_unless_the_status_is_named(cli):
    assert cli("subscribers", "add", "ann@example.org").returncode == 0
    assert cli("subscribers", "suppress", "ann@example.org", "--note", "bounced").returncode == 0
    refused = cli("subscribers", "add", "ann@example.org", "--frequency", "daily")
    assert_one_line_error(refused, "ann@example.org is on the suppression list (admin: bounced)",
                          "--status active")
    assert status(cli, "ann@example.org") == "suppressed"

    back = cli("subscribers", "add", "ann@example.org", "--status", "active")
    assert back.returncode == 0, back.stderr
    assert "updated subscriber #1 ann@example.org (active)" in back.stdout
    assert query(cli.db_url, "select count(*) from suppressions") == [(0,)]


def test_add_of_an_unsubscribed_reader_is_refused_and_keeps_their_choices(cli):
    assert cli("subscribers", "add", "bob@example.org", "--frequency", "daily", "--hour",
               "6").returncode == 0
    assert cli("subscribers", "unsubscribe", "bob@example.org").returncode == 0
    assert_one_line_error(cli("subscribers", "add", "bob@example.org"),
                          "bob@example.org unsubscribed on", "--status active")
    assert cli("subscribers", "add", "bob@example.org", "--status", "active").returncode == 0
    # An option not given keeps what the reader had.
    assert query(cli.db_url, "select status, frequency, hour from subscribers") == [
        ("active", "daily", 6)]


def test_import_prints_each_skipped_line_and_its_reason_and_exits_0(cli):
    assert cli("subscribers", "add", "left@example.org").returncode == 0
    assert cli("subscribers", "unsubscribe", "left@example.org").returncode == 0
    csv_path = cli.tmp / "subs.csv"
    csv_path.write_text("email,status\nnew@example.org,active\nleft@example.org,active\n",
                        encoding="utf-8")
    proc = cli("subscribers", "import", str(csv_path))
    assert proc.returncode == 0, proc.stderr
    assert "1 added, 0 updated, 1 skipped, 0 rejected" in proc.stdout
    [line] = proc.stderr.splitlines()
    assert line.startswith("line 3: skipped: left@example.org unsubscribed on")
    assert status(cli, "left@example.org") == "unsubscribed"


def test_a_fresh_install_seeds_the_published_taxonomy_and_adds_a_filtered_reader_before_ingest(
        cli):
    unknown = cli("subscribers", "add", "ann@example.org", "--theme", "Policing",
                  "--location", "OSCE Mission to Serbia", "--type", "News")
    assert_one_line_error(unknown, "unknown theme: Policing")
    seeded = cli("taxonomy", "seed")
    assert seeded.returncode == 0, seeded.stderr
    assert "themes: 18 added" in seeded.stdout and "content types: 2 added" in seeded.stdout
    again = cli("taxonomy", "seed")
    assert again.stdout.count("nothing new") == 3
    added = cli("subscribers", "add", "ann@example.org", "--theme", "Policing",
                "--location", "OSCE Mission to Serbia", "--type", "News")
    assert added.returncode == 0, added.stderr
    listed = cli("taxonomy", "list").stdout
    serbia = next(line for line in listed.splitlines() if "OSCE Mission to Serbia" in line)
    assert "location" in serbia and "South-Eastern Europe" in serbia
    assert_one_line_error(cli("taxonomy", "seed", str(cli.tmp / "none.json")), "cannot read")


def test_a_feed_category_that_could_not_be_filed_is_a_warning_line_naming_it_and_its_item(cli):
    feed = cli.tmp / "feed.rss"
    feed.write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>https://n.example'
        '</link><description>d</description><item><title>Budget talks</title>'
        '<link>https://n.example/1</link><category>Quarterly outlook</category>'
        '<category>OSCE Mission to Moldova</category></item></channel></rss>', encoding="utf-8")
    proc = cli("ingest", "feed", str(feed))
    assert proc.returncode == 0, proc.stderr
    assert "1 new" in proc.stdout and "1 category left unfiled" in proc.stdout
    [warning] = proc.stderr.splitlines()
    assert warning.startswith("warning: item 'Budget talks': category 'Quarterly outlook' has "
                              "no domain and is not a known theme, location or content type")
    assert query(cli.db_url, "select name from themes") == []
    assert query(cli.db_url, "select name from locations order by name") == [
        ("Eastern Europe",), ("OSCE Mission to Moldova",)]


@pytest.fixture
def sink():
    with MailSink() as s:
        yield s


def _hour_boundary_far() -> None:
    """A reader due "this hour" must still be due when the command runs: not in the last
    two minutes of an hour (a wait of at most two minutes, not a bet on speed)."""
    import time

    now = utcnow()
    if now.minute >= 58:
        time.sleep(60 * (60 - now.minute) - now.second + 1)


def test_tick_plans_the_due_slot_sends_a_due_retry_and_finishes_what_it_sent(cli, sink):
    smtp = {"smtp_host": sink.host, "smtp_port": str(sink.port)}
    cli("taxonomy", "seed")
    _hour_boundary_far()
    now = utcnow()
    assert cli("subscribers", "add", "due@example.org", "--weekday", str(now.weekday()),
               "--hour", str(now.hour)).returncode == 0
    assert cli("subscribers", "add", "other@example.org", "--weekday",
               str((now.weekday() + 3) % 7)).returncode == 0
    assert cli("ingest", "json", '[{"title": "Fresh item", "themes": ["Policing"]}]',
               **smtp).returncode == 0
    _deferred_message_due(cli.db_url, "other@example.org", now)

    proc = cli("tick", **smtp)
    assert proc.returncode == 0, proc.stderr
    assert "weekly: slot" in proc.stdout and "sending 1 digest(s)" in proc.stdout
    assert "retry: 1 deferred message(s) due, retried" in proc.stdout
    assert "sweep:" in proc.stdout
    received = sorted(m.parsed()["To"] for m in sink.wait_for(2, timeout=10))
    assert received == ["due@example.org", "other@example.org"]
    assert query(cli.db_url, "select status from deliveries order by id") == [("sent",), ("sent",)]
    assert set(query(cli.db_url, "select status from digest_runs where kind <> 'daily'")) == {
        ("done",)}
    again = cli("tick", **smtp)
    assert "already planned: nothing new" in again.stdout and len(sink.messages) == 2


def _deferred_message_due(url: str, address: str, now) -> None:
    """An ad-hoc message to ``address`` carrying every item, deferred earlier and due again:
    only a retry can send it."""
    from sqlalchemy import func, select

    from digest import db
    from digest.models import (
        Delivery,
        DeliveryStatus,
        DigestRun,
        Item,
        RunKind,
        RunStatus,
        Subscriber,
    )

    with db.session_scope(url) as session:
        sub = session.scalars(select(Subscriber).where(Subscriber.email == address)).one()
        run = DigestRun(kind=RunKind.adhoc, slot_key="adhoc:deferred", cutoff=now,
                        status=RunStatus.sending, planned_count=1)
        session.add(run)
        session.flush()
        item_ids = list(session.scalars(select(Item.id)))
        session.add(Delivery(run_id=run.id, subscriber_id=sub.id, email=sub.email,
                             status=DeliveryStatus.deferred, item_count=len(item_ids),
                             item_ids=item_ids,
                             newest_item_at=session.scalar(select(func.max(Item.ingested_at))),
                             attempts=1, next_attempt_at=now - timedelta(minutes=1)))
    db.engine_for(url).dispose()
