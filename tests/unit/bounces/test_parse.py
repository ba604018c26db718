"""Bounce reports parsed without a database: the precise code wins over a generic status."""

from __future__ import annotations

from digest.bounces import (
    parse_report,
)
from digest.models import Fault
from tests.bounce_reports import HARD_5_1_1, sample


def test_a_generic_status_gives_way_to_the_precise_code_in_the_diagnostic():
    raw = sample(HARD_5_1_1, **{"Status: 5.1.1": "Status: 5.0.0"})
    assert parse_report(raw).recipients[0].status == "5.1.1"
    no_status = sample(HARD_5_1_1, **{"Status: 5.1.1\n": "",
                                      "Diagnostic-Code: smtp; 550 5.1.1": "Diagnostic-Code: smtp; 550"})
    recipient = parse_report(no_status).recipients[0]
    # Read from the bare reply code; "User unknown" in the text makes 5.0.0 a hard bounce.
    assert (recipient.status, recipient.kind) == ("5.0.0", Fault.hard)
