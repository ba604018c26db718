"""Bad-input corpus, header values from their sources: CR/LF in item titles (the subject's
source) is flattened at ingest, so no header can be injected; CR/LF in the From, Reply-To and
List-Id settings and in addresses is refused naming the header, before anything is built."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

from digest.errors import HeaderInjectionError, ValidationError
from digest.ingest import parse_feed, parse_json_items
from digest.mail import build_message, make_message_id, normalise_address
from digest.settings import get_settings, reset_settings_cache

INJECTION = "Weekly\r\nBcc: victim@example.org"


def build(**overrides) -> bytes:
    args = dict(
        from_addr="Digest <digest@newsroom.example.org>",
        to_addr="reader@example.org",
        subject="Your weekly digest",
        html="<p>Hello</p>",
        text="Hello\n",
        message_id=make_message_id("d.1", "newsroom.example.org"),
        date=datetime(2025, 10, 14, 9, 30, tzinfo=UTC),
    )
    return build_message(**(args | overrides))


@pytest.mark.parametrize(
    "title",
    [
        pytest.param(parse_json_items(
            '{"title": "Weekly\\r\\nBcc: victim@example.org"}')[0].title, id="json-item-title"),
        pytest.param(parse_feed(
            b'<rss version="2.0"><channel><item><title>Weekly&#13;&#10;Bcc: victim@example.org'
            b"</title></item></channel></rss>")[0].title, id="feed-title-with-char-references"),
        pytest.param(parse_json_items(
            '{"title": "Weekly\\u2028Bcc: victim@example.org"}')[0].title,
            id="json-title-with-unicode-line-separator"),
    ],
)
def test_a_line_break_in_an_item_title_is_flattened_so_the_subject_injects_nothing(title):
    assert title == "Weekly Bcc: victim@example.org"
    message = email.message_from_bytes(build(subject=title), policy=email.policy.default)
    assert message["Bcc"] is None and message["Subject"] == title


@pytest.mark.parametrize(
    ("variable", "value", "argument", "header"),
    [
        pytest.param("FROM_ADDRESS", "Digest\n <digest@newsroom.example.org>", "from_addr",
                     "From", id="from-setting"),
        pytest.param("REPLY_TO", "press@example.org\r\nBcc: victim@example.org", "reply_to",
                     "Reply-To", id="reply-to-setting"),
        pytest.param("LIST_ID", "Digest\r <digest.example.org>", "list_id", "List-Id",
                     id="list-id-setting"),
    ],
)
def test_a_line_break_in_a_mail_setting_is_refused_naming_the_header(
    monkeypatch, variable, value, argument, header
):
    monkeypatch.setenv(f"DIGEST_{variable}", value)
    reset_settings_cache()
    try:
        configured = getattr(get_settings(), variable.lower())
        assert configured == value  # the setting carries it as given ...
        with pytest.raises(HeaderInjectionError) as caught:  # ... and no message is built
            build(**{argument: configured})
    finally:
        reset_settings_cache()
    assert str(caught.value) == f"{header} contains a line break (CR or LF); refusing to send"


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("reader@example.org\r\nBcc: victim@example.org", id="address-crlf"),
        pytest.param("reader@example.org\nBcc: victim@example.org", id="address-lf"),
        pytest.param("reader\r@example.org", id="address-cr-in-local-part"),
    ],
)
def test_a_line_break_in_an_address_is_refused_naming_the_address(address):
    with pytest.raises(ValidationError) as caught:
        normalise_address(address, smtputf8=False)
    assert repr(address) in str(caught.value)
    with pytest.raises(HeaderInjectionError, match="^To contains a line break"):
        build(to_addr=address)
