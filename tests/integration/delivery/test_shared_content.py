"""A batch whose readers share content (ADR 0028), sent through the real SMTP sink: every
message verifies with dkimpy and carries its own reader's address and links only."""

from __future__ import annotations

import re

import dkim
from sqlalchemy import select

from digest import db
from digest.delivery import render_delivery, send_deliveries
from digest.mail.shared import MARKS, shared_contents
from digest.models import Delivery
from digest.selection import plan_scheduled_run
from digest.tokens import read_token, subscriber_from_token
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.helpers import DOMAIN, SELECTOR, fake_dns

_LINK = re.compile(r"https://digest\.example\.org/(preferences|unsubscribe|view|feed)/"
                   r"([A-Za-z0-9_.\-]+?)(?:\.atom)?(?=[\s\"<>]|$)")


def test_a_batch_of_shared_content_is_signed_and_personal_per_reader(
        sqlite_settings, smtp_sink, dkim_key, tmp_path, monkeypatch):
    settings = sqlite_settings  # one backend: what is tested here is composing and signing
    session = db._sessionmaker(settings.database_url)()
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(dkim_key[0])
    monkeypatch.setattr(settings, "dkim_selector", SELECTOR)
    monkeypatch.setattr(settings, "dkim_private_key_path", key_path)
    shared_contents.clear()

    t = Taxo(session)
    for n in range(5):
        make_item(session, f"Police & courts story {n}", themes=[t.policing],
                  locations=[t.montenegro], ctype=t.news)
    make_item(session, "Elections observed", themes=[t.elections], locations=[t.serbia])
    # Five readers of one content (same filter, zone, grouping), of addresses the text
    # part's reason line wraps differently; one reader of another content.
    alike = ["a@example.org", "reader.two@example.org", "o'brien@example.org",
             "x" * 50 + "@example.org", "five@example.org"]
    for address in alike:
        make_subscriber(session, address, {"themes": [t.policing]}, tz="Europe/Vienna")
    make_subscriber(session, "other@example.org", {"themes": [t.elections]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()

    result = send_deliveries(run.pending_ids, settings=settings)
    assert result.sent == len(alike) + 1
    rows = {d.email: d for d in session.scalars(select(Delivery))}
    received = smtp_sink.wait_for(len(alike) + 1)
    # One content for the five, one for the other; every message after a content's first
    # is filled in (hits; the web's previews below add more).
    assert shared_contents.misses == 2 and shared_contents.hits == len(alike) - 1

    bodies_of_alike = set()
    for message in received:
        data = message.data
        assert data.startswith(b"DKIM-Signature: ")
        assert dkim.verify(data, dnsfunc=fake_dns(dkim_key[1])) is True
        msg = message.parsed()
        row = rows[msg["To"]]
        assert message.mail_from == f"bounces+{row.id}@{DOMAIN}"
        assert msg["Message-ID"] == row.message_id
        html = msg.get_body(("html",)).get_content().replace("\r\n", "\n")
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        for part in (html, text, msg["List-Unsubscribe"]):
            assert not any(mark in part for mark in MARKS.values())
            links = _LINK.findall(part)
            assert links or part is msg["List-Unsubscribe"]
            for purpose, token in links:
                if purpose == "view":
                    assert read_token("view", token, settings) == {"d": row.id}
                else:
                    purpose = "manage" if purpose == "preferences" else purpose
                    assert subscriber_from_token(purpose, token, settings) == row.subscriber_id
        for part in (html, text):
            assert row.email.replace("'", "&#39;" if part is html else "'") in part
            for address in alike + ["other@example.org"]:
                if address != row.email:
                    assert address not in part and address.replace("'", "&#39;") not in part
        # What the admin's preview and explain and `digest preview --delivery` show is what
        # was sent, apart from the links' signing second.
        shown = render_delivery(session, row.id, settings=settings)
        assert _links_out(shown.html) == _links_out(html)
        assert _links_out(shown.text) == _links_out(text)
        if row.email in alike:
            bodies_of_alike.add(_links_out(html).replace(row.email.replace("'", "&#39;"), "@"))
    # The five share everything but their personal parts.
    assert len(bodies_of_alike) == 1
    session.close()


def _links_out(part: str) -> str:
    return _LINK.sub(lambda m: f"https://digest.example.org/{m.group(1)}/LINK", part)
