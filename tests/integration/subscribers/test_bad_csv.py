"""Bad-input corpus, subscriber CSV: a bad row is reported by line with the bad value and
the good rows of the same file are imported; on export, cells a spreadsheet would run as a
formula get a leading quote. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from digest.errors import ValidationError
from digest.models import Subscriber
from digest.subscribers import FilterSpec, export_csv, import_csv, upsert_subscriber
from digest.taxonomy import resolve

HEADER = "email,frequency,timezone,weekday,hour,themes,locations,content_types,status\n"
GOOD_ROW = "good@example.org,weekly,UTC,monday,8,Policing,,,active\n"


@pytest.fixture
def taxonomy(session):
    resolve(session, "theme", ["Policing", "=SUM(A1)", "@Risk", "-Minus", "+Plus"], create=True)
    resolve(session, "location", ["OSCE Mission to Serbia"], create=True)
    resolve(session, "content_type", ["News"], create=True)
    session.commit()


BAD_ROWS = [
    pytest.param("not-an-address,weekly,UTC,0,8,,,,\n", "'not-an-address'", id="bad-address"),
    pytest.param(",weekly,UTC,0,8,,,,\n", "must have an @-sign", id="empty-address"),
    pytest.param('"ann@example.org\r\nBcc: victim@example.org",weekly,UTC,0,8,,,,\n',
                 "invalid email address 'ann@example.org\\r\\nBcc", id="crlf-in-address"),
    pytest.param("a\x00b@example.org,weekly,UTC,0,8,,,,\n", "U+0000", id="nul-in-address"),
    pytest.param("ann@example.org,weekly,UTC,0,8,Alchemy|Policing,,,\n",
                 "unknown theme: Alchemy", id="unknown-theme"),
    pytest.param("ann@example.org,weekly,UTC,0,8,,Atlantis,,\n",
                 "unknown location: Atlantis", id="unknown-location"),
    pytest.param("ann@example.org,weekly,UTC,0,8,,,Poem,\n",
                 "unknown content_type: Poem", id="unknown-content-type"),
    pytest.param("ann@example.org,weekly,UTC,0,8,=HYPERLINK(evil),,,\n",
                 "unknown theme: =HYPERLINK(evil)", id="formula-as-theme"),
    pytest.param("ann@example.org,hourly,UTC,0,8,,,,\n", "bad frequency 'hourly'",
                 id="bad-frequency"),
    pytest.param("ann@example.org,weekly,Europe/Atlantis,0,8,,,,\n",
                 "unknown time zone 'Europe/Atlantis'", id="bad-time-zone"),
    pytest.param("ann@example.org,weekly,UTC,funday,8,,,,\n", "bad weekday 'funday'",
                 id="bad-weekday"),
    pytest.param("ann@example.org,weekly,UTC,0,25,,,,\n", "bad hour '25'", id="bad-hour"),
    pytest.param("ann@example.org,weekly,UTC,0,8,,,,vip\n", "bad status 'vip'", id="bad-status"),
]


@pytest.mark.parametrize(("bad_row", "reason"), BAD_ROWS)
def test_a_bad_csv_row_is_reported_by_line_with_its_value_and_the_good_rows_are_imported(
    session, taxonomy, bad_row, reason
):
    text = HEADER + GOOD_ROW + bad_row + "last@example.org,daily,Europe/Vienna,0,7,,,News,\n"
    report = import_csv(session, text, smtputf8=False)
    session.commit()
    assert (report.added, report.updated) == (2, 0)
    [(line, message)] = report.errors
    # A quoted cell with a line break: the line reported is where the row ends.
    assert line == (4 if "\r\n" in bad_row else 3) and reason in message, message
    assert sorted(session.scalars(select(Subscriber.email))) == [
        "good@example.org", "last@example.org"
    ]


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(GOOD_ROW + GOOD_ROW, id="duplicate-row"),
        pytest.param(GOOD_ROW + GOOD_ROW.replace("good@", "GOOD@"), id="duplicate-in-other-case"),
    ],
)
def test_a_duplicated_address_is_one_subscriber(session, taxonomy, rows):
    report = import_csv(session, HEADER + rows, smtputf8=False)
    session.commit()
    assert (report.added, report.errors) == (1, [])
    assert session.scalars(select(Subscriber.email)).all() == ["good@example.org"]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("name,frequency\nann,weekly\n", id="no-email-column"),
        pytest.param("", id="empty-file"),
    ],
)
def test_a_csv_without_an_email_column_is_refused_naming_the_columns(session, text):
    with pytest.raises(ValidationError, match="header row with at least 'email'; columns: email,"):
        import_csv(session, text, smtputf8=False)


EXPORTED = [
    pytest.param("=cmd@example.org", FilterSpec(["Policing"]), "email", "'=cmd@example.org",
                 id="equals-address"),
    pytest.param("+1@example.org", FilterSpec(["Policing"]), "email", "'+1@example.org",
                 id="plus-address"),
    pytest.param("-x@example.org", FilterSpec(["Policing"]), "email", "'-x@example.org",
                 id="minus-address"),
    pytest.param("ann@example.org", FilterSpec(["=SUM(A1)"]), "themes", "'=SUM(A1)",
                 id="equals-theme"),
    pytest.param("ann@example.org", FilterSpec(["@Risk", "Policing"]), "themes",
                 ("'@Risk|Policing", "Policing|@Risk"), id="at-theme"),
    pytest.param("ann@example.org", FilterSpec(["-Minus"]), "themes", "'-Minus",
                 id="minus-theme"),
    pytest.param("ann@example.org", FilterSpec(["+Plus"]), "themes", "'+Plus", id="plus-theme"),
    # The names' order follows the database's collation ('=' sorts first in SQLite, is
    # ignored by PostgreSQL's): either way only a cell that starts with '=' is quoted.
    pytest.param("ann@example.org", FilterSpec(["Policing", "=SUM(A1)"]), "themes",
                 ("Policing|=SUM(A1)", "'=SUM(A1)|Policing"), id="formula-not-first-is-kept"),
]


@pytest.mark.parametrize(("email", "spec", "column", "cell"), EXPORTED)
def test_export_quotes_cells_a_spreadsheet_would_run_as_formulas(
    session, taxonomy, email, spec, column, cell
):
    upsert_subscriber(session, email, filters=[spec], smtputf8=False)
    upsert_subscriber(session, "plain@example.org", filters=[FilterSpec(["Policing"])], smtputf8=False)
    session.commit()
    rows = list(csv.DictReader(io.StringIO(export_csv(session))))
    # Only the first character counts: an inner '=' is left alone.
    exported = {row["email"].lstrip("'"): row for row in rows}
    assert exported[email][column] in (cell if isinstance(cell, tuple) else (cell,))
    plain = exported["plain@example.org"]
    assert (plain["email"], plain["themes"], plain["hour"]) == ("plain@example.org", "Policing",
                                                                "8")


@pytest.mark.parametrize(("email", "spec", "column", "cell"), EXPORTED)
def test_an_export_with_quoted_cells_imports_back_unchanged(
    session, taxonomy, email, spec, column, cell
):
    upsert_subscriber(session, email, filters=[spec], smtputf8=False)
    session.commit()
    before = export_csv(session)
    report = import_csv(session, before, smtputf8=False)
    session.commit()
    assert report.errors == [] and report.added == 0
    assert export_csv(session) == before
