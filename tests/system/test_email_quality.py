"""The demo digest as inboxes see it: layout in a real browser, a spam filter's verdict, DKIM.

Every message here is built by the pipeline (the demo listing ingested, a run planned,
rendered, DKIM-signed with a key made in the test, sent over SMTP) and taken as the local
SMTP server (MailSink) received it. Output for people to look at goes to test-output/:
screenshots and the HTML in test-output/email/, SpamAssassin's report in
test-output/spamassassin.txt.
"""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import time

import dkim
import pytest

from digest import db, ingest
from digest.delivery import send_deliveries
from digest.devtools import DEMO_LISTING, ReceivedMessage, demo_clock
from digest.mail import DEFAULT_SIGNED_HEADERS, DkimSigner
from digest.selection import plan_scheduled_run
from digest.subscribers import upsert_subscriber
from tests.conftest import ROOT
from tests.helpers import DOMAIN, SELECTOR, fake_dns

OUT = ROOT / "test-output"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync",
               "--disable-dev-shm-usage"]
REQUIRED_SIGNED = ["from", "to", "subject", "date", "message-id", "list-id", "list-unsubscribe",
                   "list-unsubscribe-post", "feedback-id"]


@pytest.fixture
def demo_digest(sqlite_settings, smtp_sink, dkim_key, tmp_path) -> ReceivedMessage:
    """The demo listing's digest for a reader who takes everything, as the SMTP server got it."""
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(dkim_key[0])
    settings = sqlite_settings.model_copy(
        update={"dkim_selector": SELECTOR, "dkim_private_key_path": key_path})
    items = ingest.parse_listing(DEMO_LISTING.read_text(encoding="utf-8"))
    clock = demo_clock([i.published_at for i in items if i.published_at])
    with db.session_scope(settings.database_url) as session:
        ingest.store_items(session, items, source=DEMO_LISTING.name, now=clock,
                           max_age_days=settings.max_item_age_days)
    with db.session_scope(settings.database_url) as session:
        upsert_subscriber(session, "reader@example.org", timezone="Europe/Vienna",
                          smtputf8=settings.smtputf8)
    with db.session_scope(settings.database_url) as session:
        planned = plan_scheduled_run(session, "weekly", now=clock, everyone=True,
                                     settings=settings)
    assert send_deliveries(planned.pending_ids, settings=settings).sent == 1
    (received,) = smtp_sink.wait_for(1)
    return received


def html_of(received: ReceivedMessage) -> str:
    return received.parsed().get_body(("html",)).get_content()


# --- the layout in a real browser ----------------------------------------------------------

# Each item block of the digest is the div with the rule above it; colours are read from
# the elements a reader reads, with the first opaque background behind each.
_LAYOUT_JS = """() => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
  const items = [...document.querySelectorAll('div.rule')];
  const wider = [...document.querySelectorAll('body *')]
      .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
      .map(e => e.tagName + '.' + e.className);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          items: items.map(box), titles: items.map(e => e.querySelector('h3').textContent.trim()),
          wider: wider};
}"""
_COLOURS_JS = """() => {
  const bg = e => { for (; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c; }
    return 'rgb(255, 255, 255)'; };
  const pick = {
    'summary line': document.querySelector('h1'),
    'item title': document.querySelector('div.rule h3 a'),
    'item summary': document.querySelector('div.rule p.fg'),
    'item date and type': document.querySelector('div.rule p.muted'),
    'footer': document.querySelector('.footer p.muted'),
  };
  const out = {page: getComputedStyle(document.body).backgroundColor};
  for (const [name, e] of Object.entries(pick)) {
    out[name] = e ? [getComputedStyle(e).color, bg(e)] : null; }
  return out;
}"""


def _rgb(css: str) -> tuple[float, float, float]:
    values = [float(v) for v in re.findall(r"[\d.]+", css)[:3]]
    assert len(values) == 3, css
    return tuple(values)


def luminance(css: str) -> float:
    """WCAG relative luminance of a CSS rgb() colour."""
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in _rgb(css))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    high, low = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _check_stacked(layout: dict, width: int) -> None:
    items = layout["items"]
    assert len(items) == 18, layout["titles"]  # every demo item, none lost to the layout
    for above, below in zip(items, items[1:], strict=False):
        assert below["top"] >= above["bottom"] - 0.5, (above, below)  # one per row
    for item in items:
        assert item["left"] >= 0 and item["right"] <= width + 0.5, item


@pytest.mark.browser
def test_demo_digest_reads_on_a_phone_and_a_desktop_in_light_and_dark_mode(chromium, demo_digest):
    from playwright.sync_api import sync_playwright

    shots = OUT / "email"
    shots.mkdir(parents=True, exist_ok=True)
    page_file = shots / "demo-digest.html"
    page_file.write_text(html_of(demo_digest), encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        try:
            for width, height, mobile in ((375, 812, True), (1280, 900, False)):
                context = browser.new_context(viewport={"width": width, "height": height},
                                              device_scale_factor=1, is_mobile=mobile,
                                              color_scheme="light")
                page = context.new_page()
                # Nothing outside the file may load: an email cannot count on it.
                outside: list[str] = []
                page.on("request", lambda r, outside=outside: outside.append(r.url)
                        if not r.url.startswith(("file:", "data:")) else None)
                page.goto(page_file.as_uri())
                layout = page.evaluate(_LAYOUT_JS)
                if width == 375:
                    assert layout["scrollWidth"] <= 375, layout["wider"]
                    assert layout["wider"] == []
                _check_stacked(layout, width)
                page.screenshot(path=shots / f"demo-digest-{width}.png", full_page=True)

                light = page.evaluate(_COLOURS_JS)
                assert luminance(light["page"]) > 0.7
                for name, (fg, bg) in ((k, v) for k, v in light.items() if k != "page"):
                    assert contrast(fg, bg) >= 4.5, (name, fg, bg)

                page.emulate_media(color_scheme="dark")
                dark = page.evaluate(_COLOURS_JS)
                assert luminance(dark["page"]) < 0.05, dark["page"]
                for name, (fg, bg) in ((k, v) for k, v in dark.items() if k != "page"):
                    assert luminance(bg) < 0.05, (name, bg)  # dark behind the text
                    assert luminance(fg) > 0.35, (name, fg)  # light text
                    assert contrast(fg, bg) >= 4.5, (name, fg, bg)
                _check_stacked(page.evaluate(_LAYOUT_JS), width)
                page.screenshot(path=shots / f"demo-digest-{width}-dark.png", full_page=True)
                assert outside == []
                context.close()
        finally:
            browser.close()


# --- a spam filter's verdict -----------------------------------------------------------------


def test_spamassassin_scores_the_sent_demo_digest_below_2(spamassassin, demo_digest, tmp_path):
    # -L: local tests only, nothing looked up on the network; -t: append the report.
    # Bayes off and HOME in tmp: no state read or written, the same verdict every run.
    proc = subprocess.run(
        [spamassassin, "-L", "-t", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
        input=demo_digest.data, capture_output=True, timeout=120,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    checked = proc.stdout.decode("utf-8", "replace")
    status = email.message_from_string(checked.split("\n\n", 1)[0] + "\n\n")["X-Spam-Status"]
    assert status, checked[:2000]
    score = float(re.search(r"score=(-?\d+(?:\.\d+)?)", status).group(1))
    details = checked[checked.index("Content analysis details"):]
    details = details[:details.index("\n\n", details.index("----")) + 1]
    OUT.mkdir(exist_ok=True)
    (OUT / "spamassassin.txt").write_text(
        f"spamassassin -L -t on the demo digest as sent (DKIM-signed, received by MailSink)\n"
        f"X-Spam-Status: {' '.join(status.split())}\n\n{details}", encoding="utf-8")
    assert score < 2.0, details
    # No hidden-text rule: the preheader is hidden without being painted in the background colour.
    assert "HTML_FONT_LOW_CONTRAST" not in status, details


# --- DKIM, end to end ------------------------------------------------------------------------


def _signature_tags(data: bytes) -> dict[str, str]:
    header = email.message_from_bytes(data, policy=email.policy.compat32)["DKIM-Signature"]
    pairs = (tag.split("=", 1) for tag in re.sub(r"\s", "", header).split(";") if tag)
    return {name: value for name, value in pairs}


def test_sent_digest_verifies_with_the_published_key(demo_digest, dkim_key):
    data = demo_digest.data
    # The signature leads the bytes the server received: what was signed is what was sent.
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=fake_dns(dkim_key[1])) is True
    tags = _signature_tags(data)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == (DOMAIN, SELECTOR, "rsa-sha256",
                                                            "relaxed/relaxed")
    signed = tags["h"].lower().split(":")
    assert set(REQUIRED_SIGNED) <= set(signed), signed
    # Every signed header is present exactly once, so nothing can be added beside it unseen.
    parsed = demo_digest.parsed()
    for name in REQUIRED_SIGNED:
        assert len(parsed.get_all(name, [])) == 1, name


@pytest.mark.parametrize("header", ["From", "To", "Subject", "Date", "Message-ID", "List-Id",
                                    "List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID"])
def test_changing_one_signed_header_breaks_the_signature(demo_digest, dkim_key, header):
    data = demo_digest.data
    start = data.index(f"\r\n{header}: ".encode()) + len(header) + 4
    changed = data[:start] + bytes([data[start] ^ 0x01]) + data[start + 1:]
    assert changed != data
    assert dkim.verify(changed, dnsfunc=fake_dns(dkim_key[1])) is False
    # One bit of the body, too.
    body = data.index(b"\r\n\r\n") + 200
    assert dkim.verify(data[:body] + bytes([data[body] ^ 0x01]) + data[body + 1:],
                       dnsfunc=fake_dns(dkim_key[1])) is False


def test_fast_signer_writes_exactly_what_dkimpy_alone_would(demo_digest, dkim_key, monkeypatch):
    data = demo_digest.data
    unsigned = data[data.index(b"\r\nFrom: ") + 2:]  # without the signature's folded lines
    monkeypatch.setattr(time, "time", lambda: 1_760_427_000.0)  # the t= tag
    signer = DkimSigner(SELECTOR, DOMAIN, dkim_key[0])
    ours = signer.sign(unsigned)
    theirs = dkim.sign(unsigned, SELECTOR.encode(), DOMAIN.encode(), dkim_key[0],
                       canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"rsa-sha256",
                       include_headers=[h.encode() for h in DEFAULT_SIGNED_HEADERS])
    # RSASSA-PKCS1-v1_5 is deterministic: OpenSSL's signature is dkimpy's, to the byte.
    assert ours == theirs + unsigned
    assert dkim.verify(ours, dnsfunc=fake_dns(dkim_key[1])) is True
