"""MIME assembly and DKIM signing: every built message is parsed back by the standard library."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone
from email.parser import BytesParser

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from digest.errors import ConfigError, HeaderInjectionError, ValidationError
from digest.mail import (
    DEFAULT_SIGNED_HEADERS,
    DkimSigner,
    ascii_address,
    build_message,
    check_header_value,
    make_message_id,
    normalise_address,
)
from digest.settings import Settings

FROM = "OSCE Newsroom Digest <digest@newsroom.example.org>"
TO = "reader@example.org"


def build(**overrides) -> bytes:
    args = dict(
        from_addr=FROM,
        to_addr=TO,
        subject="Your weekly digest",
        html="<html><body><p>Hello</p></body></html>",
        text="Hello\n",
        message_id=make_message_id("d.1.42", "newsroom.example.org"),
        list_id="Newsroom digest <digest.newsroom.example.org>",
        unsubscribe_url="https://digest.example.org/unsubscribe/tok123",
        unsubscribe_mailto="unsubscribe@newsroom.example.org?subject=unsubscribe",
        feedback_id="run42:weekly:digest:newsroom",
        date=datetime(2025, 10, 14, 9, 30, tzinfo=UTC),
    )
    args.update(overrides)
    return build_message(**args)


def parse(raw: bytes) -> email.message.EmailMessage:
    """Parse with policy.default, insist on no defects anywhere, and on strict parsing too."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        assert part.defects == [], part.defects
        for name, value in part.items():
            assert getattr(value, "defects", ()) == (), (name, value.defects)
    BytesParser(policy=email.policy.strict).parsebytes(raw)  # raises on any defect
    return msg


def assert_wire_format(raw: bytes) -> None:
    assert raw.isascii(), "the message must be 7-bit"
    assert raw.endswith(b"\r\n")
    without_crlf = raw.replace(b"\r\n", b"")
    assert b"\r" not in without_crlf and b"\n" not in without_crlf, "bare CR or LF"
    longest = max(len(line) for line in raw.split(b"\r\n"))
    assert longest <= 998


def body_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")


def content(part) -> str:
    # MIME text travels with CRLF line breaks; the parser hands them back as they came.
    return part.get_content().replace("\r\n", "\n")


def test_message_parses_back_with_decoded_headers_and_parts_in_order():
    subject = "Ваш дайджест: Policing 🚓 and «Gender equality» — 3 items"
    raw = build(
        from_addr="Служба новостей ОБСЕ <digest@newsroom.example.org>",
        to_addr="Zoë Ünïcødé 👩‍💻 <zoe@example.org>",
        reply_to='"Press Office, OSCE" <press@example.org>',
        subject=subject,
        text="Grüße\nSecond line\n",
        html="<p>Grüße 🚓</p>",
    )
    assert_wire_format(raw)
    msg = parse(raw)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == "Служба новостей ОБСЕ"
    assert msg["From"].addresses[0].addr_spec == "digest@newsroom.example.org"
    assert msg["To"].addresses[0].display_name == "Zoë Ünïcødé 👩‍💻"
    assert msg["To"].addresses[0].addr_spec == "zoe@example.org"
    assert msg["Reply-To"].addresses[0].display_name == "Press Office, OSCE"
    assert msg["Message-ID"] == "<d.1.42@newsroom.example.org>"
    assert msg["Date"].datetime == datetime(2025, 10, 14, 9, 30, tzinfo=UTC)
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(parts[0]) == "Grüße\nSecond line\n"
    assert content(parts[1]) == "<p>Grüße 🚓</p>"


def test_list_and_bulk_headers_are_set_for_newsletters():
    msg = parse(build())
    assert msg["List-Id"] == "Newsroom digest <digest.newsroom.example.org>"
    assert msg["List-Unsubscribe"] == (
        "<https://digest.example.org/unsubscribe/tok123>, "
        "<mailto:unsubscribe@newsroom.example.org?subject=unsubscribe>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Feedback-ID"] == "run42:weekly:digest:newsroom"
    assert msg["Precedence"] == "bulk"
    assert msg["Auto-Submitted"] is None  # newsletters are not auto-replies


def test_one_click_post_header_only_with_an_https_unsubscribe_url():
    http_only = parse(build(unsubscribe_url="http://127.0.0.1:8000/unsubscribe/tok"))
    assert http_only["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/unsubscribe/tok>")
    assert http_only["List-Unsubscribe-Post"] is None
    mailto_only = parse(build(unsubscribe_url=None, unsubscribe_mailto="leave@example.org"))
    assert mailto_only["List-Unsubscribe"] == "<mailto:leave@example.org>"
    assert mailto_only["List-Unsubscribe-Post"] is None
    neither = parse(build(unsubscribe_url=None, unsubscribe_mailto=None))
    assert neither["List-Unsubscribe"] is None


def test_optional_headers_are_left_out_when_not_given():
    msg = parse(build(list_id=None, feedback_id=None, precedence_bulk=False))
    for name in ("List-Id", "Feedback-ID", "Precedence", "Reply-To"):
        assert msg[name] is None, name


def test_fifty_kilobyte_one_line_html_is_encoded_in_short_crlf_lines_and_decodes_exactly():
    html = "<table>" + "".join(
        f'<tr><td class="item">Élément {i}: Policing &amp; «gender» — 🚓 = ok?</td></tr>'
        for i in range(700)
    ) + "</table>"
    assert len(html.encode()) > 50_000 and "\n" not in html
    raw = build(html=html, text="x" * 5000)
    assert_wire_format(raw)
    assert max(len(line) for line in body_lines(raw)) <= 76  # RFC 2045 quoted-printable limit
    parts = list(parse(raw).iter_parts())
    assert content(parts[1]) == html
    assert content(parts[0]) == "x" * 5000


def test_awkward_body_lines_survive_dots_from_trailing_spaces_and_tabs():
    text = (
        ".\n"
        "..two dots\n"
        ".leading dot\n"
        "From here on, mbox would have mangled this line\n"
        "trailing space \n"
        "trailing tab\t\n"
        "\tleading tab\n"
        "equals = sign and =3D literal\n"
        "--=_digest_0123 looks like our boundary\n"
        "\n"
        "no final newline ."
    )
    raw = build(text=text, html=text)
    assert_wire_format(raw)
    parts = list(parse(raw).iter_parts())
    assert len(parts) == 2
    assert content(parts[0]) == text
    assert content(parts[1]) == text


def test_windows_and_old_mac_line_breaks_in_bodies_become_crlf():
    raw = build(text="a\r\nb\rc\nd")
    assert_wire_format(raw)
    plain = next(parse(raw).iter_parts())
    assert plain.get_content() == "a\r\nb\r\nc\r\nd"


def test_boundary_never_occurs_inside_the_encoded_bodies():
    raw = build(text="--=_digest_\n" * 50, html="=_digest_" * 100)
    boundary = parse(raw).get_boundary()
    assert boundary.startswith("=_")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body.count(boundary.encode()) == 3  # two delimiters and the closing one
    assert build() != build()  # a fresh boundary per message


def test_long_subject_becomes_encoded_words_of_at_most_75_characters():
    subject = "Weekly digest — " + " ".join(f"thème{i} 🚓" for i in range(40))
    raw = build(subject=subject)
    assert_wire_format(raw)
    assert parse(raw)["Subject"] == subject
    header = raw.split(b"\r\nDate:")[0].split(b"Subject: ", 1)[1]
    words = re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", header)
    assert len(words) > 5 and all(len(w) <= 75 for w in words)
    assert all(len(line) <= 78 for line in (b"Subject: " + header).split(b"\r\n"))


def test_long_ascii_header_folds_at_whitespace_and_unfolds_to_the_same_text():
    subject = " ".join(f"word{i}" for i in range(60))
    raw = build(subject=subject)
    assert_wire_format(raw)
    lines = raw.split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"Subject:"))
    assert lines[start + 1].startswith(b" ")  # folded, and no encoded-words for plain ASCII
    assert b"=?" not in b"".join(lines[start : start + 4])
    assert all(len(line) <= 78 for line in lines[start : start + 4])
    assert parse(raw)["Subject"] == subject


def test_ascii_text_that_looks_like_an_encoded_word_is_not_decoded_by_readers():
    subject = "Literal =?utf-8?q?not_encoded?= text"
    assert parse(build(subject=subject))["Subject"] == subject


def test_display_names_with_specials_are_quoted_and_read_back_unchanged():
    for name in ('Doe, John', 'Quote " and \\ backslash', "J. R. R. Tolkien", "a <b>"):
        raw = build(to_addr=f'"{_escape(name)}" <reader@example.org>')
        address = parse(raw)["To"].addresses[0]
        assert (address.display_name, address.addr_spec) == (name, "reader@example.org")


def _escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def test_internationalised_domain_is_sent_in_idna_form():
    msg = parse(build(to_addr="Zoë <zoe@exämple.org>"))
    assert msg["To"].addresses[0].addr_spec == "zoe@xn--exmple-cua.org"


def test_extra_headers_are_added_and_encoded_when_needed():
    msg = parse(build(extra_headers={"X-Digest-Run": "42", "X-Note": "für dich"}))
    assert msg["X-Digest-Run"] == "42"
    assert msg["X-Note"] == "für dich"


# --- refusals: nothing is built -------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"subject": "Hello\r\nBcc: victim@example.org"}, "Subject"),
        ({"subject": "Hello\nBcc: victim@example.org"}, "Subject"),
        ({"to_addr": "reader@example.org\r\nBcc: victim@example.org"}, "To"),
        ({"to_addr": "Evil\r\nBcc: victim@example.org <reader@example.org>"}, "To"),
        ({"from_addr": "Digest\n <digest@newsroom.example.org>"}, "From"),
        ({"reply_to": "press@example.org\rX: y"}, "Reply-To"),
        ({"unsubscribe_url": "https://digest.example.org/u\r\nX-Evil: 1"}, "unsubscribe URL"),
        ({"extra_headers": {"X-Note": "ok\r\nBcc: victim@example.org"}}, "X-Note"),
        ({"extra_headers": {"X-Evil\r\nBcc": "victim@example.org"}}, "header name"),
        ({"extra_headers": {"From": "x\r\ny"}}, "From"),
    ],
)
def test_line_breaks_in_header_values_are_refused(overrides, field):
    with pytest.raises(HeaderInjectionError, match="contains a line break") as caught:
        build(**overrides)
    assert field in str(caught.value)


def test_check_header_value_returns_clean_values_and_names_the_field():
    assert check_header_value("Subject", "Fine: ünïcode too") == "Fine: ünïcode too"
    with pytest.raises(HeaderInjectionError, match=r"^Subject contains a line break"):
        check_header_value("Subject", "a\rb")


@pytest.mark.parametrize(
    "to_addr",
    ["not-an-address", "reader@", "a@b@example.org", "a@x.org, b@x.org", "Name <>", ""],
)
def test_invalid_recipient_addresses_are_refused(to_addr):
    with pytest.raises(ValidationError, match="To"):
        build(to_addr=to_addr)


def test_non_ascii_local_part_is_refused_with_the_reason():
    with pytest.raises(ValidationError, match="Internationalized characters before the @"):
        build(to_addr="zoë@example.org")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"extra_headers": {"Subject": "second subject"}}, "set by build_message itself"),
        ({"extra_headers": {"list-unsubscribe": "<x>"}}, "set by build_message itself"),
        ({"extra_headers": {"Bad Name": "x"}}, "not a valid header field name"),
        ({"unsubscribe_url": "javascript:alert(1)"}, "must start with https://"),
        ({"unsubscribe_url": "https://x.example/a b"}, "printable ASCII"),
        ({"unsubscribe_mailto": "not an address"}, "invalid email address"),
        ({"message_id": "<no-at-sign>"}, "Message-ID"),
        ({"feedback_id": "has space"}, "Feedback-ID"),
        ({"list_id": "Name <ünï.example.org>"}, "List-Id"),
        ({"date": datetime(2025, 10, 14, 9, 30)}, "timezone-aware"),
    ],
)
def test_other_bad_values_are_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ValidationError, match=message):
        build(**overrides)


def test_dates_in_other_zones_are_written_with_their_offset():
    cet = timezone(timedelta(hours=2))
    msg = parse(build(date=datetime(2025, 10, 14, 11, 30, tzinfo=cet)))
    assert msg["Date"] == "Tue, 14 Oct 2025 11:30:00 +0200"


def test_normalise_address_normalises_without_dns_and_explains_refusals():
    assert normalise_address("Reader@Example.ORG", smtputf8=False) == "Reader@example.org"
    assert normalise_address("a@no-such-domain-for-digest-tests.com", smtputf8=False) == (
        "a@no-such-domain-for-digest-tests.com"
    )
    with pytest.raises(ValidationError, match="An email address must have an @-sign"):
        normalise_address("reader.example.org", smtputf8=False)
    with pytest.raises(ValidationError, match="Internationalized characters"):
        normalise_address("zoë@example.org", smtputf8=False)


def test_ascii_address_gives_the_idna_form_or_refuses():
    assert ascii_address("zoe@exämple.org") == "zoe@xn--exmple-cua.org"
    assert ascii_address("reader@example.org") == "reader@example.org"
    with pytest.raises(ValidationError, match="Internationalized characters"):
        ascii_address("zoë@example.org")


def test_make_message_id_brackets_and_checks_its_parts():
    assert make_message_id("d.1.42", "newsroom.example.org") == "<d.1.42@newsroom.example.org>"
    for local, domain in [("a b", "x.org"), ("a", "x y.org"), ("a>", "x.org"), ("", "x.org")]:
        with pytest.raises(ValidationError, match="Message-ID"):
            make_message_id(local, domain)


# --- DKIM ------------------------------------------------------------------------------


def dns_for(record: bytes, name: bytes = b"digest2025._domainkey.newsroom.example.org."):
    def dnsfunc(qname, timeout=5):
        return record if qname == name else None

    return dnsfunc


def test_dkim_signature_verifies_and_breaks_when_one_byte_of_the_subject_changes(dkim_key):
    pem, record = dkim_key
    signer = DkimSigner("digest2025", "newsroom.example.org", pem)
    message = build(subject="Policing 🚓 digest")
    signed = signer.sign(message)
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(message)
    assert_wire_format(signed)
    parse(signed)
    assert dkim.verify(signed, dnsfunc=dns_for(record)) is True

    start = signed.index(b"\r\nSubject: ") + len(b"\r\nSubject: ") + 3
    tampered = signed[:start] + bytes([signed[start] ^ 0x01]) + signed[start + 1 :]
    assert tampered != signed
    assert dkim.verify(tampered, dnsfunc=dns_for(record)) is False


def test_dkim_signature_is_relaxed_rsa_sha256_over_the_list_headers(dkim_key):
    pem, _ = dkim_key
    signature = DkimSigner("digest2025", "newsroom.example.org", pem).sign(build())
    header = signature.split(b"\r\n\r\n")[0]
    fields = email.message_from_bytes(header, policy=email.policy.default)["DKIM-Signature"]
    pairs = (tag.split("=", 1) for tag in re.sub(r"\s", "", fields).split(";") if tag)
    tags = {name: value for name, value in pairs}
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["d"] == "newsroom.example.org" and tags["s"] == "digest2025"
    signed = tags["h"].lower().split(":")
    for name in DEFAULT_SIGNED_HEADERS:
        assert name.lower() in signed


def test_dkim_signature_fails_against_another_key(dkim_key):
    pem, _ = dkim_key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = DkimSigner("digest2025", "newsroom.example.org", pem).sign(build())
    wrong_record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    assert dkim.verify(signed, dnsfunc=dns_for(wrong_record)) is False


def test_dkim_signer_from_settings(dkim_key, tmp_path):
    pem, record = dkim_key
    unset = Settings(dkim_selector=None, dkim_private_key_path=None)
    assert DkimSigner.from_settings(unset) is None
    selector_only = Settings(dkim_selector="digest2025", dkim_private_key_path=None)
    assert DkimSigner.from_settings(selector_only) is None

    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(pem)
    signer = DkimSigner.from_settings(
        Settings(dkim_selector="digest2025", dkim_private_key_path=key_path, dkim_domain=None)
    )
    assert signer.domain == "newsroom.example.org"  # from the From address
    assert dkim.verify(signer.sign(build()), dnsfunc=dns_for(record)) is True

    other = DkimSigner.from_settings(
        Settings(dkim_selector="s1", dkim_private_key_path=key_path, dkim_domain="example.net")
    )
    assert other.domain == "example.net"


def test_dkim_key_problems_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the DKIM private key"):
        DkimSigner.from_settings(
            Settings(dkim_selector="s1", dkim_private_key_path=tmp_path / "missing.pem")
        )
    bad = tmp_path / "bad.pem"
    for body in (b"not a key", b"bm90IGEga2V5", b""):
        bad.write_bytes(
            b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"\n-----END RSA PRIVATE KEY-----\n"
        )
        with pytest.raises(ConfigError, match="not a PEM RSA private key"):
            DkimSigner.from_settings(Settings(dkim_selector="s1", dkim_private_key_path=bad))
    bad.write_bytes(b"just text")
    with pytest.raises(ConfigError, match="not a PEM RSA private key"):
        DkimSigner.from_settings(Settings(dkim_selector="s1", dkim_private_key_path=bad))


# --- SMTPUTF8: a non-ASCII local part in To (RFC 6532) ---------------------------------


def parse_utf8(raw: bytes) -> email.message.EmailMessage:
    """A message with UTF-8 headers as the receiving side reads it: text, not bytes (the
    bytes parser would turn the UTF-8 into surrogate escapes)."""
    return email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_a_non_ascii_local_part_goes_into_to_as_utf8_with_the_display_name_still_encoded():
    raw = build(to_addr="Zoë <zoë@example.org>", subject="Grüße", smtputf8=True)
    [to_line] = [line for line in header_lines(raw) if line.startswith(b"To:")]
    # No encoded-word inside the addr-spec (invalid there): the address is plain UTF-8.
    assert to_line == "To: =?utf-8?q?Zo=C3=AB?= <zoë@example.org>".encode()
    # The To line is the only 8-bit one: Subject stays RFC 2047, the bodies quoted-printable.
    assert [line for line in raw.split(b"\r\n") if not line.isascii()] == [to_line]
    msg = parse_utf8(raw)
    [to] = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Zoë", "zoë@example.org")
    assert msg["Subject"] == "Grüße"
    assert content(msg.get_body(("plain",))) == "Hello\n"
    assert len(raw.split(b"\r\n")) == len(build(smtputf8=True).split(b"\r\n"))


def test_a_utf8_to_keeps_its_domain_in_idna_form_and_its_local_part_in_nfc():
    raw = build(to_addr="иван@пример.рф", smtputf8=True)
    assert "To: иван@xn--e1afmkfd.xn--p1ai".encode() in header_lines(raw)
    decomposed = build(to_addr="Zoe\u0308@example.org", smtputf8=True)
    assert "To: Zoë@example.org".encode() in header_lines(decomposed)  # U+00EB, composed


def test_with_smtputf8_off_a_non_ascii_to_is_refused_naming_the_setting():
    with pytest.raises(ValidationError, match="To: .*DIGEST_SMTPUTF8=true enables"):
        build(to_addr="zoë@example.org", smtputf8=False)
    # An address that is wrong anyway is not blamed on the setting.
    with pytest.raises(ValidationError) as wrong:
        build(to_addr="zoë@@example.org", smtputf8=False)
    assert "DIGEST_SMTPUTF8" not in str(wrong.value)


def test_build_message_takes_smtputf8_from_its_caller_never_from_the_environment(monkeypatch):
    from digest.settings import reset_settings_cache

    monkeypatch.setenv("DIGEST_SMTPUTF8", "true")
    reset_settings_cache()
    try:
        with pytest.raises(ValidationError, match="DIGEST_SMTPUTF8"):
            build(to_addr="zoë@example.org")  # not told: off, whatever the environment says
        assert "To: zoë@example.org".encode() in header_lines(
            build(to_addr="zoë@example.org", smtputf8=True))
    finally:
        reset_settings_cache()


def test_smtputf8_changes_nothing_for_ascii_and_idn_recipients_nor_for_from():
    def same_boundary(raw: bytes) -> bytes:
        return re.sub(rb"=_digest_[0-9a-f]+", b"=_digest_B", raw)

    for to_addr in (TO, "Reader <zoe@exämple.org>"):
        on, off = build(to_addr=to_addr, smtputf8=True), build(to_addr=to_addr, smtputf8=False)
        assert same_boundary(on) == same_boundary(off)
        assert_wire_format(on)
    # Only To may carry UTF-8: From and Reply-To stay ASCII whatever the setting.
    for field in ("from_addr", "reply_to"):
        with pytest.raises(ValidationError, match="Internationalized characters"):
            build(**{field: "Zoë <zoë@newsroom.example.org>"}, smtputf8=True)


def test_normalise_address_accepts_a_non_ascii_local_part_only_with_smtputf8():
    assert normalise_address("Zoe\u0308@Example.ORG", smtputf8=True) == "Zoë@example.org"
    assert normalise_address("иван@пример.рф", smtputf8=True) == "иван@пример.рф"
    with pytest.raises(ValidationError, match="not supported: 'ë'; setting DIGEST_SMTPUTF8"):
        normalise_address("zoë@example.org", smtputf8=False)
    with pytest.raises(ValidationError, match="An email address must have an @-sign"):
        normalise_address("zoë.example.org", smtputf8=True)


def test_dkim_signature_over_a_utf8_to_header_verifies_and_breaks_when_it_changes(dkim_key):
    pem, record = dkim_key
    signer = DkimSigner("digest2025", "newsroom.example.org", pem)
    message = build(to_addr="Zoë <zoë@example.org>", smtputf8=True)
    signed = signer.sign(message)
    assert signed.endswith(message) and signed[: -len(message)].isascii()
    head = signed[: -len(message)].decode("ascii")
    signed_headers = re.search(r"\bh=([^;]+)", re.sub(r"\s", "", head))[1].lower().split(":")
    assert "to" in signed_headers and "from" in signed_headers
    assert dkim.verify(signed, dnsfunc=dns_for(record)) is True
    tampered = signed.replace("zoë@".encode(), "zoé@".encode())
    assert tampered != signed
    assert dkim.verify(tampered, dnsfunc=dns_for(record)) is False
