"""A feed's bytes to text: BOM, HTTP charset, XML declaration, else UTF-8; decoded
strictly, never guessed."""

from __future__ import annotations

import codecs
import email.message
import re

from digest.errors import IngestError

_BOMS: tuple[tuple[bytes, str], ...] = (  # longest first: UTF-32 LE starts like UTF-16 LE
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Without a BOM, the XML spec's own sniffing: how '<?' looks in a 16/32-bit encoding.
_WIDE_STARTS: tuple[tuple[bytes, str], ...] = (
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00?\x00", "utf-16-le"),
    (b"\x00<\x00?", "utf-16-be"),
)
_XML_DECL = re.compile(rb"^\s*<\?xml\b[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
_XML_DECL_TEXT = re.compile(r"^(\s*<\?xml\b[^>]*?\bencoding\s*=\s*[\"'])([^\"']*)([\"'])")
# Labels that mean a wider encoding in practice (WHATWG): "gb2312" feeds use GBK characters.
_WIDER = {"gb2312": "gbk", "euc_cn": "gbk"}


def _codec(label: str, where: str) -> str:
    try:
        name = codecs.lookup(label).name
    except LookupError:
        raise IngestError(
            f"unknown character encoding {label!r} in the {where}; use a standard name "
            "such as utf-8, windows-1251 or gbk"
        ) from None
    return _WIDER.get(name.replace("-", "_"), name)


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header value, or None."""
    if not content_type:
        return None
    message = email.message.Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    return str(charset).strip() or None if isinstance(charset, str) else None


def decode_feed(data: bytes, http_charset: str | None = None) -> str:
    """The feed's text, decoded strictly, or IngestError naming the encoding and byte offset.

    The encoding comes from, in this order: a byte order mark, the HTTP charset (RFC 7303
    lets it override the document), the XML declaration, else UTF-8. Nothing is guessed:
    a legacy encoding that nobody declares fails as UTF-8 and is refused, where feedparser
    would have read it as windows-1252 and stored mojibake.
    """
    body = bytes(data)
    bom = next(((mark, name) for mark, name in _BOMS if body.startswith(mark)), None)
    declared = _XML_DECL.match(body[:1024])
    if bom is not None:
        body, encoding, where = body[len(bom[0]):], bom[1], "from its byte order mark"
    elif http_charset:
        encoding = _codec(http_charset, "HTTP Content-Type charset")
        where = "from the HTTP Content-Type charset"
    elif (wide := next((n for start, n in _WIDE_STARTS if body.startswith(start)), None)):
        encoding, where = wide, "from its first bytes, UTF-16/32 without a byte order mark"
    elif declared:
        label = declared.group(1).decode("ascii")
        encoding, where = _codec(label, "XML declaration"), "from its XML declaration"
        if encoding.startswith(("utf-16", "utf-32")):
            raise IngestError(
                f"the XML declaration says {label!r} but the document has no byte order mark "
                "and is written in a one-byte encoding; fix the declaration"
            )
    else:
        encoding, where = "utf-8", "no encoding declared, so UTF-8"
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(bom[0]) if bom else 0)
        hint = (
            "; declare the real encoding in the XML declaration "
            "(<?xml version=\"1.0\" encoding=\"windows-1251\"?>) or the HTTP charset"
            if where.startswith("no encoding") else ""
        )
        raise IngestError(
            f"feed is not valid {encoding} ({where}): undecodable byte "
            f"0x{body[exc.start]:02x} at byte offset {offset}{hint}; refused rather than "
            "stored garbled"
        ) from None
    return text.lstrip("\ufeff")


def as_utf8(text: str) -> bytes:
    # feedparser gets UTF-8 that says so: it has nothing left to guess.
    return _XML_DECL_TEXT.sub(r"\1utf-8\3", text, count=1).encode("utf-8")


# An HTML page's own declaration, in its first bytes: <meta charset="..."> or the
# http-equiv form's content="text/html; charset=...".
_META_CHARSET = re.compile(rb"<meta\b[^>]*?\bcharset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.I)


def decode_page(data: bytes, content_type: str | None, *, what: str = "page") -> str:
    """A web page's (or a text listing's) text: byte order mark, the HTTP charset, the
    page's ``<meta charset>``, else UTF-8; decoded strictly, never guessed."""
    body = bytes(data)
    bom = next(((mark, name) for mark, name in _BOMS if body.startswith(mark)), None)
    http_charset = charset_of(content_type)
    meta = _META_CHARSET.search(body[:2048])
    if bom is not None:
        body, encoding, where = body[len(bom[0]):], bom[1], "from its byte order mark"
    elif http_charset:
        encoding = _codec(http_charset, "HTTP Content-Type charset")
        where = "from the HTTP Content-Type charset"
    elif meta:
        encoding = _codec(meta.group(1).decode("ascii"), "page's <meta charset>")
        where = "from its <meta charset>"
    else:
        encoding, where = "utf-8", "no encoding declared, so UTF-8"
    try:
        return body.decode(encoding).lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        expected = "UTF-8 text" if encoding == "utf-8" else f"valid {encoding}"
        raise IngestError(
            f"the {what} is not {expected} ({where}): undecodable byte "
            f"0x{body[exc.start]:02x} at byte offset {exc.start}; declare its real encoding "
            "(<meta charset> or the HTTP charset) or save it as UTF-8"
        ) from None
