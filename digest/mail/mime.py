"""One email as bytes: headers, text/plain and text/html parts (DKIM is ``dkim.py``'s).

The message is assembled by hand instead of with ``email.message.EmailMessage``: the
standard library's generator costs ~3 ms per message, more than rendering it. What the
generator would give us for free is done here explicitly:

- CRLF line ends everywhere and no line over 998 characters (MJML's HTML is one line);
- both parts quoted-printable in UTF-8 (``binascii.b2a_qp`` is C code), so the body is 7-bit;
  a block the renderer reuses across messages (a fragment) is encoded once and its bytes
  reused wherever a line starts in it: quoted-printable starts afresh after every line break,
  so the bytes are the same as encoding the whole body (``_quoted_printable``);
- header values with anything but printable ASCII become RFC 2047 encoded-words, each at
  most 75 characters; header lines are folded at whitespace near 78 characters;
- addresses are ASCII, an internationalised domain in its IDNA form; the one exception is
  a To address with a non-ASCII local part when SMTPUTF8 is on (``DIGEST_SMTPUTF8``): it is
  written in UTF-8 as RFC 6532 allows (the message then needs SMTPUTF8 to travel), and
  refused when the setting is off;
- every header value is checked for CR/LF before anything is assembled (header injection).

DKIM signs the finished bytes; nothing may touch them afterwards.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Protocol

from digest.addresses import (
    _ascii_addr_spec,
    _utf8_addr_spec,
    check_header_value,
)
from digest.errors import ValidationError

__all__ = ["CRLF", "DEFAULT_SIGNED_HEADERS", "build_message", "make_message_id", "new_boundary"]

CRLF = "\r\n"
# RFC 5322 2.1.1: lines SHOULD be <= 78 characters and MUST be <= 998.
_SOFT_LIMIT = 78
_HARD_LIMIT = 998
# RFC 2047 2: an encoded-word is at most 75 characters.
_MAX_ENCODED_WORD = 75

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "MIME-Version",
    "Content-Type",
)

# Headers build_message writes itself; extra_headers may not repeat them.
_OWN_HEADERS = frozenset(
    h.lower()
    for h in (
        *DEFAULT_SIGNED_HEADERS,
        "Reply-To",
        "Precedence",
        "Content-Transfer-Encoding",
        "DKIM-Signature",
    )
)
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext: printable ASCII except ':'
_PLAIN_HEADER_TEXT = re.compile(r"[\x20-\x7e\t]*")
_NAME_AND_ANGLE = re.compile(r"^(?P<name>.*?)\s*<(?P<inner>[^<>]*)>\s*$", re.S)
_BOUNDARY = re.compile(r"=_digest_[0-9a-f]{8,64}")
_MSG_ID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+")
# Characters an encoded-word may carry unencoded in Q form, even inside a phrase (RFC 2047 5(3)).
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_CHAR = ["_" if b == 0x20 else chr(b) if b in _Q_SAFE else f"={b:02X}" for b in range(256)]
_Q_COST = [len(c) for c in _Q_CHAR]


class Fragment(Protocol):
    """A block of a body that recurs across messages (``digest.render.fragments.Fragment``):
    its text, and where its encodings are kept once computed."""

    @property
    def text(self) -> str: ...
    @property
    def encoded(self) -> dict[int, bytes]: ...


def new_boundary() -> str:
    """A fresh multipart boundary. '=' in quoted-printable is always followed by two hex
    digits or a line break, so '=_' never occurs in an encoded body: no content collides."""
    return "=_digest_" + secrets.token_hex(12)


def make_message_id(local: str, domain: str) -> str:
    """``<local@domain>``; both parts must be dot-atom text (no spaces, brackets or '@')."""
    for part_name, part in (("local part", local), ("domain", domain)):
        if not _MSG_ID_PART.fullmatch(part or ""):
            raise ValidationError(
                f"Message-ID {part_name} {part!r} must be non-empty ASCII without spaces, "
                "'<', '>' or '@'"
            )
    return f"<{local}@{domain}>"


def build_message(
    *,
    from_addr: str,
    to_addr: str,
    subject: str,
    html: str,
    text: str,
    message_id: str,
    list_id: str | None = None,
    unsubscribe_url: str | None = None,
    unsubscribe_mailto: str | None = None,
    feedback_id: str | None = None,
    reply_to: str | None = None,
    date: datetime | None = None,
    precedence_bulk: bool = True,
    extra_headers: Mapping[str, str] | None = None,
    smtputf8: bool = False,
    html_fragments: Sequence[Fragment] = (),
    text_fragments: Sequence[Fragment] = (),
    boundary: str | None = None,
) -> bytes:
    """The complete message (RFC 5322 + MIME) as the bytes to hand to SMTP.

    ``from_addr``, ``to_addr`` and ``reply_to`` are ``addr@domain`` or ``Name <addr@domain>``.
    A ``to_addr`` with a non-ASCII local part is written in UTF-8 (RFC 6532) when
    ``smtputf8`` (the DIGEST_SMTPUTF8 setting; off unless passed) allows it, and refused
    otherwise. ``html_fragments``/``text_fragments``: blocks of ``html``/``text``, in the
    order they occur, whose encoding may be reused (a hint: the bytes are the same without).
    ``boundary``: the multipart boundary (``=_digest_`` and hex digits; default a fresh
    random one), given when many messages share their encoded parts (ADR 0028).
    Raises HeaderInjectionError for CR/LF in any header value and ValidationError for an
    invalid address, URL or header name; nothing is built in either case.
    """
    extra = dict(extra_headers or {})
    # Every value that reaches a header is checked before any work is done.
    checks = [
        ("From", from_addr),
        ("To", to_addr),
        ("Subject", subject),
        ("Message-ID", message_id),
        ("Reply-To", reply_to),
        ("List-Id", list_id),
        ("unsubscribe URL", unsubscribe_url),
        ("unsubscribe mailto", unsubscribe_mailto),
        ("Feedback-ID", feedback_id),
        *((f"header name {name!r}", name) for name in extra),
        *extra.items(),
    ]
    for name, value in checks:
        if value is not None:
            check_header_value(name, value)
    for name in extra:
        if not _FIELD_NAME.fullmatch(name):
            raise ValidationError(f"extra header name {name!r} is not a valid header field name")
        if name.lower() in _OWN_HEADERS:
            raise ValidationError(f"extra header {name!r} is set by build_message itself")

    if date is None:
        date = datetime.now(UTC)
    elif date.tzinfo is None:
        raise ValidationError("date must be timezone-aware (all datetimes are UTC-aware)")

    to_header = _mailbox("To", to_addr, smtputf8=smtputf8, hint=True)
    headers: list[str] = [
        _fold("From", _mailbox("From", from_addr)),
        _fold("To", to_header),
        _unstructured("Subject", subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {_message_id(message_id)}",
    ]
    if reply_to:
        headers.append(_fold("Reply-To", _mailbox("Reply-To", reply_to)))
    if list_id:
        headers.append(_fold("List-Id", _list_id(list_id)))
    unsubscribe = _unsubscribe_targets(unsubscribe_url, unsubscribe_mailto)
    if unsubscribe:
        headers.append(_fold("List-Unsubscribe", ", ".join(f"<{u}>" for u in unsubscribe)))
        # RFC 8058 one-click needs an HTTPS URI to POST to.
        if unsubscribe_url and unsubscribe_url.lower().startswith("https://"):
            headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    if feedback_id:
        headers.append(_fold("Feedback-ID", _ascii_token("Feedback-ID", feedback_id)))
    if precedence_bulk:
        headers.append("Precedence: bulk")
    for name, value in extra.items():
        headers.append(_unstructured(name, value))

    text_qp = _quoted_printable(text, text_fragments)
    html_qp = _quoted_printable(html, html_fragments)
    # '=' in QP is always followed by two hex digits or a line break, so '=_' never occurs
    # in an encoded body: the boundary cannot collide with the content.
    if boundary is None:
        boundary = new_boundary()
    elif not _BOUNDARY.fullmatch(boundary):
        raise ValidationError(f"MIME boundary {boundary!r} must be '=_digest_' and hex digits")
    headers.append("MIME-Version: 1.0")
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')

    part_head = (
        'Content-Type: text/{}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    # Headers are ASCII (encoding would catch a slip) except a UTF-8 To (RFC 6532).
    head = (CRLF.join(headers) + CRLF + CRLF).encode("ascii" if to_header.isascii() else "utf-8")
    delimiter = f"--{boundary}\r\n".encode("ascii")
    return b"".join(
        (
            head,
            delimiter,
            part_head.format("plain").encode("ascii"),
            text_qp,
            b"\r\n",
            delimiter,
            part_head.format("html").encode("ascii"),
            html_qp,
            b"\r\n",
            f"--{boundary}--\r\n".encode("ascii"),
        )
    )


# --- mailboxes and structured values -------------------------------------------------


def _mailbox(header: str, value: str, *, smtputf8: bool = False, hint: bool = False) -> str:
    """``Name <addr>`` or ``addr`` with the name quoted or encoded and the address ASCII
    (with ``smtputf8``, a non-ASCII local part stays UTF-8; the domain is IDNA either way)."""
    match = _NAME_AND_ANGLE.match(value)
    if match:
        name, addr = _unquote(match["name"].strip()), match["inner"].strip()
    else:
        name, addr = "", value.strip()
    if not addr:
        raise ValidationError(f"{header} has no email address: {value!r}")
    try:
        spec = _utf8_addr_spec(addr) if smtputf8 else _ascii_addr_spec(addr, hint)
    except ValidationError as exc:
        raise ValidationError(f"{header}: {exc}") from exc
    if not name:
        return spec
    return f"{_phrase(name)} <{spec}>"


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _phrase(name: str) -> str:
    """A display name as an RFC 5322 phrase: atoms, a quoted-string or encoded-words."""
    if _needs_encoding(name):
        return " ".join(_encoded_words(name, _MAX_ENCODED_WORD))
    if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]+", name) and "  " not in name:
        return name.strip()
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list_id(value: str) -> str:
    match = _NAME_AND_ANGLE.match(value)
    name, inner = (match["name"].strip(), match["inner"].strip()) if match else ("", value.strip())
    _ascii_token("List-Id", inner)
    return f"{_phrase(name)} <{inner}>" if name else f"<{inner}>"


def _message_id(value: str) -> str:
    inner = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    local, at, domain = inner.rpartition("@")
    if not at:
        raise ValidationError(f"Message-ID {value!r} must look like <local@domain>")
    return make_message_id(local, domain)


def _unsubscribe_targets(url: str | None, mailto: str | None) -> list[str]:
    targets = []
    if url:
        if not re.match(r"https?://", url, re.I):
            raise ValidationError(f"unsubscribe URL {url!r} must start with https:// or http://")
        targets.append(_ascii_token("unsubscribe URL", url))
    if mailto:
        if not mailto.lower().startswith("mailto:"):
            mailto = "mailto:" + mailto
        address = mailto[len("mailto:") :].split("?", 1)[0]
        _ascii_addr_spec(address)
        targets.append(_ascii_token("unsubscribe mailto", mailto))
    for target in targets:
        if any(c in target for c in "<>,"):
            raise ValidationError(f"unsubscribe target {target!r} may not contain '<', '>' or ','")
    return targets


def _ascii_token(name: str, value: str) -> str:
    if not re.fullmatch(r"[\x21-\x7e]+", value):
        raise ValidationError(
            f"{name} {value!r} must be printable ASCII without spaces (percent-encode URLs)"
        )
    return value


# --- header encoding and folding -------------------------------------------------------


def _needs_encoding(value: str) -> bool:
    # '=?' would be read back as the start of an encoded-word.
    return not _PLAIN_HEADER_TEXT.fullmatch(value) or "=?" in value


@lru_cache(maxsize=512)  # a run's subjects repeat (the count and the period vary little)
def _unstructured(name: str, value: str) -> str:
    """``Name: value`` for free text: plain and folded, or RFC 2047 encoded-words."""
    # Folding cannot split a word; a word too long for a line is encoded (and so split).
    longest_word = max((len(w) for w in value.split()), default=0)
    if not _needs_encoding(value) and longest_word <= _HARD_LIMIT - len(name) - 2:
        return _fold(name, value)
    first = min(_MAX_ENCODED_WORD, _SOFT_LIMIT - len(name) - 2)
    words = _encoded_words(value, _MAX_ENCODED_WORD, first=first)
    return f"{name}: " + "\r\n ".join(words)


def _encoded_words(value: str, limit: int, first: int | None = None) -> list[str]:
    """``value`` as UTF-8 encoded-words of at most ``limit`` characters (``first`` for the
    first one), split between characters, in whichever of Q and B is shorter overall."""
    data = value.encode("utf-8")
    q_total = sum(map(_Q_COST.__getitem__, data))
    encoding = "q" if q_total <= (len(data) + 2) // 3 * 4 else "b"
    prefix, suffix = f"=?utf-8?{encoding}?", "?="
    overhead = len(prefix) + len(suffix)
    words: list[str] = []
    chunk: list[str] = []
    size = 0  # encoded length of chunk (Q) or its byte count (B)
    room = (first or limit) - overhead
    for char in value:
        raw = char.encode("utf-8")
        cost = len(raw) if encoding == "b" else sum(map(_Q_COST.__getitem__, raw))
        grown = (size + cost + 2) // 3 * 4 if encoding == "b" else size + cost
        if chunk and grown > room:
            words.append(prefix + _encode_chunk("".join(chunk), encoding) + suffix)
            chunk, size, room = [], 0, limit - overhead
        chunk.append(char)
        size += cost
    words.append(prefix + _encode_chunk("".join(chunk), encoding) + suffix)
    return words


def _encode_chunk(chunk: str, encoding: str) -> str:
    data = chunk.encode("utf-8")
    if encoding == "b":
        return base64.b64encode(data).decode("ascii")
    return "".join(map(_Q_CHAR.__getitem__, data))


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded before whitespace so lines stay near 78 characters.

    Unfolding (removing each CRLF) gives back ``value`` exactly. A word too long for one
    line stays whole; it must still fit the hard 998 limit.
    """
    line = f"{name}: "
    lines: list[str] = []
    # Each token is its leading whitespace plus one word; folding happens before a token.
    for token in re.findall(r"[ \t]*[^ \t]+|[ \t]+$", value):
        foldable = token[:1] in (" ", "\t") and token.strip()  # never a whitespace-only line
        if foldable and len(line) + len(token) > _SOFT_LIMIT:
            lines.append(line)
            line = token
        else:
            line += token
    lines.append(line)
    if any(len(each) > _HARD_LIMIT for each in lines):
        raise ValidationError(f"{name} has a word too long for one header line (998 characters)")
    return CRLF.join(lines)


# --- bodies --------------------------------------------------------------------------


def _quoted_printable(body: str, fragments: Sequence[Fragment] = ()) -> bytes:
    """UTF-8 quoted-printable with CRLF line ends (hard and soft), lines <= 76 characters.

    ``fragments`` are blocks of ``body`` in the order they occur; from the first line that
    starts in a fragment to its end, the fragment's encoding (computed once, kept on it) is
    used. The encoder's state (line length, what ends a line) starts afresh after each line
    break, so a piece of the body that starts after a line break and ends with one encodes
    alone to exactly the bytes it gets inside the whole body. A fragment that is not found
    in order, does not end with a line break, has no line starting in it or holds a CR
    (whose normalising could join it to its neighbour) is simply encoded with the rest.
    """
    if not fragments:
        return _qp(body)
    pieces: list[bytes] = []
    done = 0  # body[:done] is encoded
    for fragment in fragments:
        text = fragment.text
        if not text.endswith("\n") or "\r" in text:
            continue
        # Found by a short probe, then compared whole: cheaper than searching for 2 KB.
        probe = text[:_PROBE]
        at = body.find(probe, done)
        while at >= 0 and not body.startswith(text, at):
            at = body.find(probe, at + 1)
        if at < 0:
            continue
        # Where the first line that starts inside the fragment begins.
        skip = 0 if at == 0 or body[at - 1] == "\n" else text.find("\n") + 1
        if skip >= len(text):
            continue
        encoded = fragment.encoded.get(skip)
        if encoded is None:
            encoded = fragment.encoded[skip] = _qp(text[skip:])
        if at + skip > done:
            pieces.append(_qp(body[done:at + skip]))
        pieces.append(encoded)
        done = at + len(text)
    if done < len(body):
        pieces.append(_qp(body[done:]))
    return b"".join(pieces)


_PROBE = 64


def _qp(body: str) -> bytes:
    # Line breaks in the text become CRLF, MIME's canonical form for text.
    normalised = body.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(normalised.encode("utf-8"), quotetabs=False, istext=True)
    # b2a_qp writes '\n' for hard and soft breaks when the input has LF line ends (or none).
    return encoded.replace(b"\n", b"\r\n")
