"""``digest explain EMAIL ITEM`` as an operator runs it: words, JSON, one-line errors."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, select

from digest.models import Item
from tests.conftest import ROOT
from tests.system.cli.test_cli import cli  # noqa: F401 (fixture)


def assert_error(proc, fragment: str) -> None:
    """A clear ``error: ...`` line, exit 1, no traceback (log lines may come before it)."""
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


def _first_item(url: str) -> tuple[int, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(Item.id, Item.url).order_by(Item.id).limit(1)).one()
            return row[0], row[1]
    finally:
        engine.dispose()


def test_explain_says_why_in_words_and_as_json_and_refuses_unknown_input(cli):
    assert cli("ingest", "listing", str(ROOT / "digest/data/demo-newsroom.txt")).returncode == 0
    assert cli("subscribers", "add", "ann@example.org").returncode == 0
    item_id, url = _first_item(cli.db_url)
    words = cli("explain", "ann@example.org", str(item_id))
    assert words.returncode == 0, words.stderr
    assert words.stdout.startswith(f"Item {item_id}")
    assert "You have no filter: everything matches you." in words.stdout
    assert "Digest window (by ingested_at)" in words.stdout
    as_json = cli("explain", "ann@example.org", url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["item_id"] == item_id and body["matches"] is True and body["sentences"]
    assert_error(cli("explain", "nobody@example.org", str(item_id)),
                 "no subscriber nobody@example.org")
    assert_error(cli("explain", "ann@example.org", "999999"), "no item with id 999999")
    assert_error(cli("explain", "ann@example.org", str(item_id), "--as-of", "soon"), "bad date")
