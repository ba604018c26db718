"""The one composition path: confirmations are signed like digests, and a preview is the
digest the reader is then sent."""

from __future__ import annotations

import re
from datetime import timedelta

import dkim
from typer.testing import CliRunner

from digest import cli, db
from digest.delivery import send_confirmation, send_deliveries
from digest.devtools import ReceivedMessage
from digest.selection import plan_scheduled_run
from digest.settings import get_settings, reset_settings_cache
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.helpers import DOMAIN, SELECTOR, fake_dns


def configure_dkim(settings, monkeypatch, tmp_path, pem: bytes) -> None:
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(pem)
    monkeypatch.setattr(settings, "dkim_selector", SELECTOR)
    monkeypatch.setattr(settings, "dkim_private_key_path", key_path)


def signed_headers(data: bytes) -> set[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    h_tag = re.search(r"\bh=([^;]+)", re.sub(r"\r\n[ \t]+", " ", head)).group(1)
    return {name.strip().lower() for name in h_tag.split(":")}


def test_a_confirmation_is_dkim_signed_when_dkim_is_configured(
        sqlite_settings, smtp_sink, dkim_key, tmp_path, monkeypatch):
    configure_dkim(sqlite_settings, monkeypatch, tmp_path, dkim_key[0])
    with db.session_scope(sqlite_settings.database_url) as session:
        sub = make_subscriber(session, "new@example.org", status="pending")
        sub_id = sub.id

    message_id = send_confirmation(sub_id, settings=sqlite_settings)

    (received,) = smtp_sink.wait_for(1)
    assert received.data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(received.data, dnsfunc=fake_dns(dkim_key[1])) is True
    assert {"from", "to", "subject", "date", "message-id"} <= signed_headers(received.data)
    msg = received.parsed()
    assert msg["Message-ID"] == message_id and message_id.startswith(f"<confirm.{sub_id}.")
    # Still a transactional mail: from the From address, no list headers.
    assert received.mail_from == f"digest@{DOMAIN}"
    assert msg["List-Unsubscribe"] is None and msg["Precedence"] is None
    assert "/confirm/" in msg.get_body(("plain",)).get_content()


def test_a_confirmation_is_unsigned_without_dkim(sqlite_settings, smtp_sink):
    with db.session_scope(sqlite_settings.database_url) as session:
        sub_id = make_subscriber(session, "new@example.org", status="pending").id
    send_confirmation(sub_id, settings=sqlite_settings)
    (received,) = smtp_sink.wait_for(1)
    assert b"DKIM-Signature" not in received.data


# Links made per delivery or per signing (their tokens carry a timestamp): not compared.
_PERSONAL_LINK = re.compile(r"(https://digest\.example\.org/(?:preferences|unsubscribe|view|feed))/"
                            r"[A-Za-z0-9_.\-]+")


def _same_links(text: str) -> str:
    return _PERSONAL_LINK.sub(r"\1/LINK", text.replace("\r\n", "\n"))


def _parts(received: ReceivedMessage) -> tuple[str, str, str]:
    msg = received.parsed()
    return (msg["Subject"], msg.get_body(("html",)).get_content(),
            msg.get_body(("plain",)).get_content())


def test_preview_is_the_digest_the_reader_is_then_sent(
        sqlite_settings, smtp_sink, tmp_path, monkeypatch):
    # Three items for a cap of two: the preview must show the "and 1 more" link too. Set
    # where the CLI reads it (the environment); the sending below gets the same settings.
    monkeypatch.setenv("DIGEST_MAX_ITEMS_PER_DIGEST", "2")
    reset_settings_cache()
    settings = get_settings()
    as_of = T0
    with db.session_scope(sqlite_settings.database_url) as session:
        taxo = Taxo(session)
        for n, (themes, places) in enumerate([
            ([taxo.policing], [taxo.montenegro]),
            ([taxo.gender, taxo.policing], [taxo.serbia]),
            ([taxo.policing], [taxo.bishkek]),
            ([taxo.elections], [taxo.bishkek]),  # not chosen: in neither
        ]):
            make_item(session, f"Story {n}", themes=themes, locations=places,
                      ingested_at=as_of - timedelta(days=n + 1), ctype=taxo.news)
        make_subscriber(session, "reader@example.org",
                        {"themes": [taxo.policing, taxo.gender]},
                        {"themes": [taxo.policing], "locations": [taxo.see]},
                        tz="Europe/Vienna")

    out = tmp_path / "preview"
    result = CliRunner().invoke(cli.app, ["preview", "reader@example.org",
                                          "--as-of", as_of.isoformat(), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "reader_at_example.org.html").read_text(encoding="utf-8")
    text = (out / "reader_at_example.org.txt").read_text(encoding="utf-8")

    with db.session_scope(sqlite_settings.database_url) as session:
        planned = plan_scheduled_run(session, "weekly", now=as_of, everyone=True,
                                     settings=settings)
    assert send_deliveries(planned.pending_ids, settings=settings).sent == 1
    (received,) = smtp_sink.wait_for(1)
    subject, sent_html, sent_text = _parts(received)

    assert f"subject: {subject}" in result.output
    assert "3 item(s)" in result.output
    assert _same_links(html) == _same_links(sent_html)
    assert _same_links(text) == _same_links(sent_text)
    # What the old preview left out: the period, the reader's themes, the "more" link.
    newsroom = settings.newsroom_url
    assert "10\u201312 October 2025" in text
    assert "of your themes" in text
    more = f"{newsroom}?theme=Gender+equality&theme=Policing&location=South-Eastern+Europe"
    assert f"and 1 more in the newsroom: {more}" in text
    assert more.replace("&", "&amp;") in html
    assert "View in browser" in html
