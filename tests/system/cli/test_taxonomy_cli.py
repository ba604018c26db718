"""`digest db upgrade` seeds a fresh install, and `digest taxonomy rename|merge|move|review|
file|dismiss`, run as real processes: what they print, and one-line errors for bad input."""

from __future__ import annotations

from tests.system.cli.test_cli import assert_one_line_error, cli  # noqa: F401 (fixture)
from tests.system.cli.test_operator_rules import query

FEED = ('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>https://n.example'
        '</link><description>d</description><item><title>Budget talks</title>'
        '<link>https://n.example/1</link><category>Quarterly outlook</category>'
        '<category>Policing</category></item></channel></rss>')


def test_db_upgrade_seeds_a_fresh_install_once_so_a_filtered_reader_can_be_added_at_once(cli):
    first = cli("db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "a fresh install: the newsroom's taxonomy added" in first.stdout
    added = cli("subscribers", "add", "ann@example.org", "--filter",
                "themes=Policing;locations=OSCE Mission to Serbia;types=News")
    assert added.returncode == 0, added.stderr
    # A database that knows terms is never added to again (the operator's taxonomy is theirs).
    assert cli("taxonomy", "rename", "theme", "Youth", "Young people").returncode == 0
    again = cli("db", "upgrade")
    assert "fresh install" not in again.stdout
    assert query(cli.db_url, "select count(*) from themes where slug = 'youth'") == [(0,)]
    assert "fresh install" not in cli("db", "upgrade", "--no-seed").stdout


def test_rename_merge_and_move_say_what_they_did_and_refuse_bad_names_in_one_line(cli):
    assert cli("db", "upgrade").returncode == 0
    renamed = cli("taxonomy", "rename", "theme", "Policing", "Police work")
    assert renamed.returncode == 0 and "renamed 'Policing' to 'Police work'" in renamed.stdout
    assert_one_line_error(cli("taxonomy", "rename", "theme", "Youth", "Elections"),
                          "merge them: digest taxonomy merge theme 'Youth' --into 'Elections'")
    merged = cli("taxonomy", "merge", "theme", "Good governance",
                 "Environmental good governance", "--into", "Democratization")
    assert merged.returncode == 0, merged.stderr
    moved = cli("taxonomy", "move", "Youth", "--from", "theme", "--to", "location")
    assert moved.returncode == 0, moved.stderr
    assert "'Youth' moved from theme to location" in moved.stdout
    assert_one_line_error(cli("taxonomy", "move", "Nope", "--from", "theme", "--to", "type"),
                          "unknown theme: Nope")
    assert_one_line_error(cli("taxonomy", "move", "Youth", "--from", "place", "--to", "theme"),
                          "unknown facet 'place'")


def test_review_lists_an_unfiled_category_and_file_tags_its_item(cli):
    assert cli("db", "upgrade").returncode == 0
    feed = cli.tmp / "feed.rss"
    feed.write_text(FEED, encoding="utf-8")
    assert cli("ingest", "feed", str(feed)).returncode == 0
    review = cli("taxonomy", "review")
    assert review.returncode == 0 and "Quarterly outlook" in review.stdout
    filed = cli("taxonomy", "file", "Quarterly outlook", "--as", "content-type")
    assert filed.returncode == 0, filed.stderr
    assert "filed 'Quarterly outlook' as content-type: 1 item(s) tagged" in filed.stdout
    assert query(cli.db_url, "select c.name from items i join content_types c "
                             "on c.id = i.content_type_id") == [("Quarterly outlook",)]
    assert "nothing to review" in cli("taxonomy", "review").stdout
    assert_one_line_error(cli("taxonomy", "dismiss", "Quarterly outlook"),
                          "'Quarterly outlook' is not on the review list")
