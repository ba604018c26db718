"""ARF feedback reports (RFC 5965): recognised, their fields read, their delivery named."""

import pytest

from digest.bounces import parse_report
from digest.bounces.arf import parse_feedback
from digest.errors import BounceError
from tests.bounce_reports import HARD_5_1_1
from tests.conftest import TEST_DATA

DATA = TEST_DATA / "complaints"


def test_the_rfc_5965_example_is_an_abuse_complaint_with_its_recipient():
    report = parse_feedback((DATA / "rfc5965-example.eml").read_bytes())
    assert report is not None
    assert report.feedback_type == "abuse" and report.is_complaint
    assert report.recipient == "user@example.com"
    assert "User-Agent: SomeGenerator/1.0" in report.detail
    # Not one of ours: nothing names a delivery.
    assert report.verp_ids == [] and report.message_id_ids is None and report.header_id is None


def test_yahoo_report_names_the_delivery_by_the_verp_in_original_mail_from():
    report = parse_feedback((DATA / "yahoo-cfl-abuse.eml").read_bytes())
    assert report is not None and report.is_complaint
    assert report.verp_ids == [101]
    assert report.message_id_ids == (7, 101)
    assert report.recipient == "gone@example.net"


def test_microsoft_jmrp_report_with_a_redacted_to_names_the_delivery_by_its_headers():
    report = parse_feedback((DATA / "microsoft-jmrp-abuse.eml").read_bytes())
    assert report is not None and report.is_complaint
    assert report.verp_ids == []
    assert report.message_id_ids == (7, 102) and report.header_id == 102
    assert report.recipient == ""  # "To: <redacted>" is no address


def test_aol_report_without_any_recipient_names_the_delivery_by_the_returned_return_path():
    report = parse_feedback((DATA / "aol-scomp-abuse.eml").read_bytes())
    assert report is not None and report.is_complaint
    assert report.verp_ids == [103] and report.recipient == ""
    assert "User-Agent: AOL SComp" in report.detail


def test_the_same_report_hashes_the_same_and_another_differently():
    yahoo = (DATA / "yahoo-cfl-abuse.eml").read_bytes()
    first, again = parse_feedback(yahoo), parse_feedback(yahoo.replace(b"\n", b"\r\n"))
    other = parse_feedback((DATA / "aol-scomp-abuse.eml").read_bytes())
    assert first and again and other
    assert first.report_hash == again.report_hash != other.report_hash


@pytest.mark.parametrize(("kind", "complaint"), [
    ("abuse", True), ("fraud", True), ("other", True),
    ("not-spam", False), ("virus", False), ("auth-failure", False),
])
def test_only_a_readers_feedback_types_are_complaints(kind, complaint):
    raw = (DATA / "yahoo-cfl-abuse.eml").read_bytes().replace(
        b"Feedback-Type: abuse", b"Feedback-Type: " + kind.encode())
    report = parse_feedback(raw)
    assert report is not None and report.feedback_type == kind
    assert report.is_complaint is complaint


def test_a_bounce_is_no_feedback_report_and_a_feedback_report_no_bounce():
    assert parse_feedback(HARD_5_1_1.read_bytes()) is None
    # Before complaints were read, flufl.bounce took the report for "not a bounce"; it still is.
    assert parse_report((DATA / "yahoo-cfl-abuse.eml").read_bytes()) is None


def test_a_feedback_report_without_its_feedback_part_is_refused_in_one_sentence():
    raw = (DATA / "yahoo-cfl-abuse.eml").read_bytes().replace(
        b"Content-Type: message/feedback-report", b"Content-Type: text/plain")
    with pytest.raises(BounceError, match="no message/feedback-report part"):
        parse_feedback(raw)


def test_a_report_returning_only_the_headers_names_the_delivery_by_them():
    raw = (DATA / "yahoo-cfl-abuse.eml").read_bytes().replace(
        b"Content-Type: message/rfc822", b"Content-Type: text/rfc822-headers").replace(
        b"Original-Mail-From: <bounces+101@newsroom.example.org>",
        b"Original-Mail-From: <digest@newsroom.example.org>")
    report = parse_feedback(raw)
    assert report is not None and report.verp_ids == []
    assert report.message_id_ids == (7, 101)
