"""MIME assembly cost per message: digest.mail.build_message vs the standard library.

A 10-item-like digest: ~50 KB of one-line HTML (as MJML emits it) and ~5 KB of text, with
the same headers and quoted-printable utf-8 bodies in all three builders, measured in the
same run. Run from the project root:

    python bench/mime.py

The last rows build the same message with a line break after each item block (as the digest
template writes them), once with the blocks passed as fragments whose quoted-printable bytes
are kept from one message to the next (what a worker does after its first message of a
run), once without; the bytes are the same.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import timeit
from datetime import UTC, datetime
from email import message_from_bytes
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP, compat32, default
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.mail import DkimSigner, build_message, make_message_id  # noqa: E402
from digest.render.fragments import Fragment  # noqa: E402

ITEM_HTML = (
    '<tr><td style="padding:12px 0;font-family:Arial,sans-serif;">'
    '<a href="https://www.osce.org/mission-to-montenegro/item-{i}" style="color:#0b5394;">'
    "Mission supports community policing training in Nikšić — item {i}</a>"
    '<div style="font-size:13px;color:#555;">'
    "Policing · OSCE Mission to Montenegro · Press release</div>"
    "<p>Thirty police officers completed a course on community policing, crime prevention and "
    "co-operation with local residents. «Trust is built locally», the Head of Mission said.</p>"
    "</td></tr>"
)
ITEM_TEXT = (
    "* Mission supports community policing training in Nikšić — item {i}\n"
    "  Policing · OSCE Mission to Montenegro · Press release\n"
    "  https://www.osce.org/mission-to-montenegro/item-{i}\n"
    "  Thirty police officers completed a course on community policing, crime prevention\n"
    "  and co-operation with local residents.\n\n"
)


def sample() -> tuple[str, str]:
    html = '<!doctype html><html><body><table width="100%">'
    i = 0
    while len(html.encode()) < 50_000:
        html += ITEM_HTML.format(i=i)
        i += 1
    html += "</table></body></html>"
    text = "Your weekly digest\n\n"
    i = 0
    while len(text.encode()) < 5_000:
        text += ITEM_TEXT.format(i=i)
        i += 1
    return html, text


HTML, TEXT = sample()


def sample_in_blocks() -> tuple[str, list[Fragment], str, list[Fragment]]:
    """The sample with each item's HTML and text on its own lines, and those blocks."""
    head, rest = HTML.split("<tr>", 1)
    html_blocks = [f"<tr>{b}\n" for b in rest.removesuffix("</table></body></html>").split("<tr>")]
    text_head, _, _ = TEXT.partition("* ")
    text_blocks = [f"* {b}" for b in TEXT[len(text_head):].split("* ") if b]
    html = head + "\n" + "".join(html_blocks) + "</table></body></html>"
    return (html, [Fragment(b) for b in html_blocks],
            text_head + "".join(text_blocks), [Fragment(b) for b in text_blocks])


HTML_LINES, HTML_FRAGMENTS, TEXT_LINES, TEXT_FRAGMENTS = sample_in_blocks()
HEADERS = dict(
    from_addr="OSCE Newsroom Digest <digest@newsroom.example.org>",
    to_addr="Zoë Reader <reader@example.org>",
    subject="Your weekly digest: Policing, Gender equality — 10 new items",
    message_id=make_message_id("d.42.1001", "newsroom.example.org"),
    list_id="Newsroom digest <digest.newsroom.example.org>",
    unsubscribe_url="https://digest.example.org/unsubscribe/eyJzIjoxMDAxfQ.abc",
    unsubscribe_mailto="unsubscribe@newsroom.example.org?subject=unsubscribe",
    feedback_id="run42:weekly:digest:newsroom",
    date=datetime(2025, 10, 14, 9, 30, tzinfo=UTC),
)


def with_build_message() -> bytes:
    return build_message(html=HTML, text=TEXT, **HEADERS)


def blocks_without_fragments() -> bytes:
    return build_message(html=HTML_LINES, text=TEXT_LINES, **HEADERS)


def blocks_as_fragments() -> bytes:
    return build_message(html=HTML_LINES, text=TEXT_LINES, html_fragments=HTML_FRAGMENTS,
                         text_fragments=TEXT_FRAGMENTS, **HEADERS)


def _std_headers(msg) -> None:
    h = HEADERS
    msg["From"] = h["from_addr"]
    msg["To"] = h["to_addr"]
    msg["Subject"] = h["subject"]
    msg["Date"] = format_datetime(h["date"])
    msg["Message-ID"] = h["message_id"]
    msg["List-Id"] = h["list_id"]
    msg["List-Unsubscribe"] = f"<{h['unsubscribe_url']}>, <mailto:{h['unsubscribe_mailto']}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Feedback-ID"] = h["feedback_id"]
    msg["Precedence"] = "bulk"


def with_email_message() -> bytes:
    msg = EmailMessage(policy=SMTP)
    _std_headers(msg)
    msg.set_content(TEXT, cte="quoted-printable")
    msg.add_alternative(HTML, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


COMPAT32_CRLF = compat32.clone(linesep="\r\n")
UTF8_QP = Charset("utf-8")
UTF8_QP.body_encoding = QP  # the legacy default for utf-8 would be base64


def with_legacy_mime() -> bytes:
    msg = MIMEMultipart("alternative")
    _std_headers(msg)
    # The legacy (compat32) API wants non-ASCII headers encoded by the caller.
    for name, value in (("From", HEADERS["from_addr"]), ("To", HEADERS["to_addr"])):
        del msg[name]
        msg[name] = formataddr(parseaddr(value), "utf-8")
    del msg["Subject"]
    msg["Subject"] = Header(HEADERS["subject"], "utf-8")
    msg.attach(MIMEText(TEXT, "plain", UTF8_QP))
    msg.attach(MIMEText(HTML, "html", UTF8_QP))
    return msg.as_bytes(policy=COMPAT32_CRLF)


def _parsed_bodies(raw: bytes) -> list[str]:
    msg = message_from_bytes(raw, policy=default)
    # set_content() adds a final newline to a body without one; that difference is fine.
    return [p.get_content().replace("\r\n", "\n").rstrip("\n") for p in msg.iter_parts()] + [
        msg["Subject"]
    ]


def ms_per_call(func, repeat: int = 5) -> float:
    """Best of ``repeat`` rounds of ~0.3 s each, in milliseconds per call."""
    number = max(1, int(0.3 / max(timeit.timeit(func, number=3) / 3, 1e-6)))
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1000


def dkim_signer() -> DkimSigner | None:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:  # only to make a throwaway key; part of the test extra
        return None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return DkimSigner("bench", "newsroom.example.org", pem)


def main() -> None:
    built = with_build_message()
    print(f"python {platform.python_version()}, os.cpu_count()={os.cpu_count()}")
    print(
        f"message: html {len(HTML.encode())} B (one line), text {len(TEXT.encode())} B, "
        f"built {len(built)} B; bodies quoted-printable utf-8 in all three"
    )
    for func in (with_email_message, with_legacy_mime):  # same message, parsed back
        assert _parsed_bodies(func()) == _parsed_bodies(built), func.__name__
    results = {
        "digest.mail.build_message": ms_per_call(with_build_message),
        "email.message.EmailMessage (policy SMTP)": ms_per_call(with_email_message),
        "legacy email.mime (MIMEMultipart/MIMEText)": ms_per_call(with_legacy_mime),
    }
    base = results["digest.mail.build_message"]
    for name, ms in results.items():
        print(f"  {name:<44} {ms:7.3f} ms/message   x{ms / base:6.1f}")
    boundary = re.compile(rb"=_digest_[0-9a-f]+")
    assert TEXT_LINES == TEXT and HTML_LINES.replace("\n", "") == HTML
    assert (boundary.sub(b"B", blocks_as_fragments())
            == boundary.sub(b"B", blocks_without_fragments())), "fragments changed the bytes"
    print(f"  item blocks on their own lines ({len(HTML_FRAGMENTS)} HTML, "
          f"{len(TEXT_FRAGMENTS)} text):")
    for name, func in (("build_message, no fragments", blocks_without_fragments),
                       ("build_message, fragments' QP kept", blocks_as_fragments)):
        ms = ms_per_call(func)
        print(f"  {name:<44} {ms:7.3f} ms/message   x{ms / base:6.1f}")
    signer = dkim_signer()
    if signer is not None:
        import dkim

        def pure_python() -> bytes:  # dkimpy on its own: RSA with Python integers
            return dkim.sign(built, b"bench", b"newsroom.example.org", signer._key,
                             canonicalize=(b"relaxed", b"relaxed"),
                             signature_algorithm=b"rsa-sha256", include_headers=signer._headers)

        for name, func in (("DKIM sign, dkimpy alone (pure-Python RSA)", pure_python),
                           ("DKIM sign, DkimSigner (dkimpy + OpenSSL RSA)",
                            lambda: signer.sign(built))):
            print(f"  {name:<44} {ms_per_call(func):7.3f} ms/message   (rsa-sha256, 2048-bit)")


if __name__ == "__main__":
    main()
