"""The items list's cursor: a round trip gives the same place; anything else is a
ValidationError (422) saying to send next_cursor as given."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from digest.errors import ValidationError
from digest.web.api.items import decode_cursor, encode_cursor


def test_a_cursor_names_the_same_moment_and_id_after_a_round_trip():
    moment = datetime(2025, 10, 9, 10, 30, 0, 123456, tzinfo=UTC)
    cursor = encode_cursor(moment, 42)
    assert "=" not in cursor and decode_cursor(cursor) == (moment, 42)


@pytest.mark.parametrize("raw", [b"junk", b"[]", b'["x", 1]', b'["2025-10-09T10:30:00", 1]',
                                 b'["2025-10-09T10:30:00+00:00", "1"]',
                                 b'["2025-10-09T10:30:00+00:00", true]', b"\xff\xfe"])
def test_a_cursor_that_is_not_one_of_ours_is_refused_saying_what_to_send(raw):
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(ValidationError, match="give the next_cursor value of a previous page"):
        decode_cursor(cursor)
    with pytest.raises(ValidationError, match="bad cursor"):
        decode_cursor("!!!" + cursor)
