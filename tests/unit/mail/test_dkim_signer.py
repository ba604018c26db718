"""The DKIM signer (ADR 0028): the header dkimpy writes for the same message in the same
second, every signature verified by dkimpy, with and without shared body pieces."""

from __future__ import annotations

import time

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.mail import DEFAULT_SIGNED_HEADERS, DkimSigner, build_message, make_message_id
from digest.mail.dkim import _relaxed_lines
from tests.helpers import fake_dns

SELECTOR, DOMAIN = "digest2025", "newsroom.example.org"
NOW = 1_760_000_000.0


@pytest.fixture
def signer(dkim_key, monkeypatch):
    # One second for both signers: dkimpy reads time.time() for t=, ours through now().
    monkeypatch.setattr(time, "time", lambda: NOW)
    return DkimSigner(SELECTOR, DOMAIN, dkim_key[0])


def verify(data: bytes, record: bytes) -> bool:
    return dkim.verify(data, dnsfunc=fake_dns(record)) is True


def message(**overrides) -> bytes:
    args = dict(
        from_addr="Newsroom Digest <digest@newsroom.example.org>", to_addr="r@example.org",
        subject="Your weekly digest", html="<p>Hello</p>", text="Hello\n",
        message_id=make_message_id("d.1.42", DOMAIN),
        list_id="Newsroom digest <digest.newsroom.example.org>",
        unsubscribe_url="https://digest.example.org/unsubscribe/tok123",
        unsubscribe_mailto="unsubscribe@newsroom.example.org?subject=unsubscribe",
        feedback_id="digest:x:newsroom")
    args.update(overrides)
    return build_message(**args)


RAW_HEAD = (b"From: Newsroom <digest@newsroom.example.org>\r\nTo: r@example.org\r\n"
            b"Subject:   folded\r\n\tover  two lines  \r\nDate: Mon, 13 Oct 2025 08:00:00 +0000\r\n"
            b"Message-ID: <x@newsroom.example.org>\r\nX-Other: not signed\r\n")

MESSAGES = {
    "built, plain": message(),
    "trailing whitespace in the parts": message(
        text="line with spaces   \nand a tab\t\n  \n\tindented\n", html="<p>x</p>   \n \n"),
    "empty lines at the end": message(text="Hello\n\n\n\n", html="<p>x</p>\n\n\n"),
    "long lines": message(text="word " * 400 + "\n", html="<td>" + "x" * 5000 + "</td>"),
    "non-ASCII headers": message(
        subject="Políce & «courts» — 🚓 digest " * 4,
        from_addr="Zoë Ünïcödé Newsroom <digest@newsroom.example.org>",
        to_addr="Zoë <zoë@exämple.org>", smtputf8=True),
    "runs of spaces and tabs": message(
        text="a  b\t\tc \t d\n" * 50, html="<p>  a  \t b  </p>\n" * 50),
    "raw: whitespace and empty lines at the end": RAW_HEAD + b"\r\nbody  \t\r\n\r\n \r\n\r\n",
    "raw: body of empty lines": RAW_HEAD + b"\r\n\r\n\r\n\r\n",
    "raw: no body": RAW_HEAD + b"\r\n",
    "raw: no final line break": RAW_HEAD + b"\r\nlast line  ",
    "raw: bare LF (dkimpy's path)": RAW_HEAD.replace(b"\r\n", b"\n") + b"\nbody\n",
    "raw: repeated signed header": RAW_HEAD + b"To: second@example.org\r\n\r\nx\r\n",
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_the_signature_is_dkimpys_and_verifies(signer, dkim_key, name):
    data = MESSAGES[name]
    signed = signer.sign(data)
    assert signed == signer.sign_with_dkimpy(data)
    reference = dkim.sign(data, SELECTOR.encode(), DOMAIN.encode(), dkim_key[0],
                          canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[h.encode() for h in DEFAULT_SIGNED_HEADERS])
    assert signed == reference + data
    assert verify(signed, dkim_key[1])


def test_a_changed_byte_of_the_body_fails_verification(signer, dkim_key):
    signed = signer.sign(message(text="The original words\n"))
    assert verify(signed, dkim_key[1])
    assert not verify(signed.replace(b"original", b"0riginal"), dkim_key[1])


def pieces_of(data: bytes) -> list[bytes]:
    """Line-aligned runs of the body, in order (what a shared content passes)."""
    body = data.split(b"\r\n\r\n", 1)[1]
    lines = body.split(b"\r\n")[:-1]
    return [b"\r\n".join(lines[i:i + 3]) + b"\r\n" for i in range(0, len(lines) - 3, 5)]


@pytest.mark.parametrize("name", [n for n in MESSAGES if not n.startswith("raw: bare")])
def test_shared_pieces_change_nothing_in_the_signature(signer, dkim_key, name):
    data = MESSAGES[name]
    expected = signer.sign(data)
    pieces = pieces_of(data)
    wrong = [b"not in the message\r\n", b"", b"x", data[-7:]]  # ignored: absent, mid-line
    for attempt in range(2):  # the second time from the kept canonical forms and state
        assert signer.sign(data, pieces) == expected, attempt
        assert signer.sign(data, wrong + pieces) == expected
        assert signer.sign(data, pieces[::-1]) == expected


def test_kept_pieces_serve_other_messages_that_share_them(signer, dkim_key):
    shared_html = "<p>the  shared \t part</p>\n" * 200
    first, second = (message(to_addr=f"{who}@example.org", html=shared_html + f"<p>{who}</p>",
                             boundary="=_digest_00112233445566778899aabb")
                     for who in ("one", "two"))
    start = first.index(b"<p>the")
    piece = first[start:first.index(b"<p>one")]
    assert piece in second
    for data in (first, second, first):
        signed = signer.sign(data, [piece])
        assert signed == signer.sign_with_dkimpy(data)
        assert verify(signed, dkim_key[1])


def test_the_kept_pieces_are_bounded(signer):
    from digest.mail import dkim as dkim_module

    for n in range(dkim_module.SHARED_PIECES + 20):
        data = message(text=f"piece {n}\nmore\n")
        signer.sign(data, pieces_of(data) or [data.split(b"\r\n\r\n", 1)[1][:20]])
    assert len(signer._pieces) <= dkim_module.SHARED_PIECES
    assert len(signer._states) <= dkim_module.SHARED_PIECES


lines = st.lists(st.text(st.sampled_from(list("ab \t=é")), max_size=30), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines, st.integers(min_value=0, max_value=4))
def test_any_body_signs_as_dkimpy_signs_it(signer, dkim_key, body_lines, trailing):
    body = "\r\n".join(body_lines).encode() + b"\r\n" * trailing
    data = RAW_HEAD + b"\r\n" + body
    signed = signer.sign(data, pieces_of(data))
    assert signed == signer.sign_with_dkimpy(data)
    assert _relaxed_lines(body) == dkim.canonicalization.compress_whitespace(
        dkim.canonicalization.strip_trailing_whitespace(body))


def test_the_settings_give_one_kept_signer_per_key_and_a_new_key_at_once(dkim_key, tmp_path):
    """Every batch asks for a signer: it is the process's kept one while the key file holds
    the same key, and a rotated key (the file rewritten) is used from the next ask on."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from digest.settings import Settings

    path = tmp_path / "dkim.pem"
    path.write_bytes(dkim_key[0])
    settings = Settings.model_construct(dkim_selector=SELECTOR, dkim_domain=DOMAIN,
                                        dkim_private_key_path=str(path))
    first = DkimSigner.from_settings(settings)
    assert first is not None and DkimSigner.from_settings(settings) is first
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    path.write_bytes(rotated)
    second = DkimSigner.from_settings(settings)
    assert second is not first and second._key == rotated
