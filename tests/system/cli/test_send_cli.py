"""``digest send`` as a real process: the ad-hoc send's "also include in digests" (rule H3)
and the clock of a real send (rule C1)."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from digest.models import DigestRun
from tests.ledger import claims
from tests.system.cli.test_cli import assert_one_line_error, cli  # noqa: F401 (fixture)

ITEM = {"guid": "cli-h3", "title": "Border police training", "themes": ["Policing"]}


def _rows(url: str, query):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(query).all()
    finally:
        engine.dispose()


def _claimed(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return [claim.item_id for claim in claims(session)]
    finally:
        engine.dispose()


def test_adhoc_also_in_digests_claims_nothing_and_the_default_claims_what_it_carried(
        cli, smtp_sink):
    smtp = {"smtp_host": smtp_sink.host, "smtp_port": str(smtp_sink.port)}
    assert cli("ingest", "json", json.dumps([ITEM])).returncode == 0
    assert cli("subscribers", "add", "ann@example.org", "--theme", "Policing").returncode == 0
    also = cli("send", "adhoc", "--item", "1", "--also-in-digests", **smtp)
    assert also.returncode == 0, also.stderr
    assert "may carry these items again" in also.stdout
    assert _claimed(cli.db_url) == []
    plain = cli("send", "adhoc", "--item", "1", **smtp)
    assert plain.returncode == 0, plain.stderr
    assert [m.rcpt_tos for m in smtp_sink.wait_for(2)] == [["ann@example.org"]] * 2
    assert "will leave out what it carries to them" in plain.stdout
    assert _claimed(cli.db_url) == [1]
    params = [row[0]["also_in_digests"] for row in _rows(
        cli.db_url, select(DigestRun.params).order_by(DigestRun.id))]
    assert params == [True, False]


def test_a_real_send_as_of_a_future_date_is_a_one_line_error_and_a_dry_run_may_look_ahead(cli):
    from datetime import UTC, datetime, timedelta

    assert cli("ingest", "json", json.dumps([ITEM])).returncode == 0
    assert cli("subscribers", "add", "ann@example.org").returncode == 0
    ahead = (datetime.now(UTC) + timedelta(days=7)).date().isoformat()
    for args in (["weekly", "--now"], ["weekly"], ["daily"]):
        assert_one_line_error(cli("send", *args, "--as-of", ahead),
                              "ahead of the present", "--dry-run")
    assert _rows(cli.db_url, select(DigestRun.id)) == []
    dry = cli("send", "weekly", "--now", "--dry-run", "--as-of", ahead)
    assert dry.returncode == 0, dry.stderr
    assert "would send 1 digest(s)" in dry.stdout
