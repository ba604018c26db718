"""The personal Atom feed over HTTP on SQLite and PostgreSQL: what it carries (the reader's
filters, newest first, no backfill, at most DIGEST_FEED_ITEMS), who gets a 404 (a forged,
altered or other-purpose token, an erased, unsubscribed or unconfirmed reader), conditional
GET, and the links to it from the digest footer and the preferences page."""

from __future__ import annotations

import re
from datetime import timedelta

import feedparser
import pytest
from pydantic import SecretStr

from digest.mail.compose import MessageFactory
from digest.models import utcnow
from digest.render import RenderItem
from digest.subscribers import erase_subscriber, unsubscribe
from digest.tokens import feed_url, links_for, subscriber_from_token, subscriber_token
from tests.factories import make_item, make_subscriber
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    BASE,
    client,
    db_session,
    taxo,
    web_settings,
)


def path_of(url: str) -> str:
    return url.removeprefix(BASE)



def _opens_feed_of(url: str, settings) -> int:
    """Whose feed a feed URL opens. Tokens carry the second they were signed, so a URL the
    server made and one made here a moment later may differ and both be right."""
    base, _, name = url.rpartition("/feed/")
    assert base == feed_url(0, settings).rpartition("/feed/")[0] and name.endswith(".atom")
    return subscriber_from_token("feed", name[: -len(".atom")], settings)

@pytest.fixture
def newsroom(db_session, taxo):
    """Ann wants Policing in South-Eastern Europe (a region) or any press release; items
    that match in each way, items that do not, and an archive backfill item that would."""
    t = taxo
    now = utcnow()
    ann = make_subscriber(db_session, "ann@example.org",
                          {"themes": [t.policing], "locations": [t.see]}, {"types": [t.press]})
    bob = make_subscriber(db_session, "bob@example.org", {"themes": [t.elections]})

    def item(title, hours_ago, **kw):
        return make_item(db_session, title, ingested_at=now - timedelta(hours=hours_ago), **kw)

    wanted = [
        item("Police training in Podgorica", 1, themes=[t.policing], locations=[t.montenegro]),
        item("A press release from Bishkek", 2, themes=[t.gender], locations=[t.bishkek],
             ctype=t.press),
        item("Community policing in Serbia", 3, themes=[t.policing], locations=[t.serbia],
             ctype=t.news),
    ]
    item("Policing in Bishkek", 4, themes=[t.policing], locations=[t.bishkek])  # wrong place
    item("Elections in Serbia", 5, themes=[t.elections], locations=[t.serbia])  # wrong theme
    make_item(db_session, "Old police report", themes=[t.policing], locations=[t.montenegro],
              ingested_at=now - timedelta(hours=6), published_at=now - timedelta(days=400),
              backfill=True)
    db_session.commit()
    return ann, bob, wanted


def test_feed_lists_exactly_the_items_the_readers_filters_match_newest_first(
    client, web_settings, newsroom
):
    ann, _, wanted = newsroom
    response = client.get(path_of(feed_url(ann.id, web_settings)))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.bozo_exception
    assert parsed.version == "atom10"
    assert [e.title for e in parsed.entries] == [i.title for i in wanted]
    assert [e.link for e in parsed.entries] == [i.url for i in wanted]
    first = parsed.entries[0]
    assert first.summary == wanted[0].summary
    assert {(c.scheme, c.label) for c in first.tags} == {
        ("theme", "Policing"), ("location", "OSCE Mission to Montenegro")}
    assert parsed.feed.title == f"{web_settings.newsroom_name}: your digest items"
    self_link = [link.href for link in parsed.feed.links if link.rel == "self"]
    assert len(self_link) == 1 and _opens_feed_of(self_link[0], web_settings) == ann.id
    # Nothing in it opens the reader's preferences or unsubscribes them.
    assert b"/preferences/" not in response.content and b"/unsubscribe/" not in response.content


def test_another_readers_feed_follows_their_own_filters(client, web_settings, newsroom):
    _, bob, _ = newsroom
    parsed = feedparser.parse(client.get(path_of(feed_url(bob.id, web_settings))).content)
    assert [e.title for e in parsed.entries] == ["Elections in Serbia"]


def test_feed_holds_at_most_the_configured_number_of_items(
    client, web_settings, newsroom, monkeypatch
):
    ann, _, wanted = newsroom
    monkeypatch.setattr(client.app.state, "settings", web_settings.model_copy(
        update={"feed_items": 2}))
    parsed = feedparser.parse(client.get(path_of(feed_url(ann.id, web_settings))).content)
    assert [e.title for e in parsed.entries] == [i.title for i in wanted[:2]]


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda tok: tok[:-2] + ("AA" if not tok.endswith("AA") else "BB"), id="altered"),
    pytest.param(lambda tok: "not-a-token", id="garbage"),
    pytest.param(lambda tok: tok.split(".")[0], id="truncated"),
])
def test_forged_or_altered_feed_token_gets_404(client, web_settings, newsroom, spoil):
    ann, _, _ = newsroom
    token = subscriber_token("feed", ann.id, web_settings)
    response = client.get(f"/feed/{spoil(token)}.atom")
    assert response.status_code == 404
    assert "No such feed" in response.text


def test_a_token_made_for_another_purpose_does_not_open_the_feed(client, web_settings, newsroom):
    ann, _, _ = newsroom
    for purpose in ("manage", "unsubscribe", "confirm"):
        token = subscriber_token(purpose, ann.id, web_settings)
        assert client.get(f"/feed/{token}.atom").status_code == 404, purpose


def test_a_token_signed_with_another_key_gets_404(client, web_settings, newsroom):
    ann, _, _ = newsroom
    other = web_settings.model_copy(update={"secret_key": SecretStr("x" * 40)})
    assert client.get(path_of(feed_url(ann.id, other))).status_code == 404


def test_feed_of_an_unsubscribed_or_erased_reader_gets_404(
    client, web_settings, db_session, newsroom
):
    ann, bob, _ = newsroom
    ann_feed, bob_feed = path_of(feed_url(ann.id, web_settings)), path_of(
        feed_url(bob.id, web_settings))
    unsubscribe(db_session, ann)
    erase_subscriber(db_session, bob)
    db_session.commit()
    assert client.get(ann_feed).status_code == 404
    assert client.get(bob_feed).status_code == 404


def test_feed_of_a_reader_who_has_not_confirmed_gets_404(client, web_settings, db_session, taxo):
    pending = make_subscriber(db_session, "pending@example.org", status="pending")
    db_session.commit()
    assert client.get(path_of(feed_url(pending.id, web_settings))).status_code == 404


def test_feed_answers_304_to_a_conditional_get_until_an_item_arrives(
    client, web_settings, db_session, taxo, newsroom
):
    ann, _, _ = newsroom
    path = path_of(feed_url(ann.id, web_settings))
    first = client.get(path)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert first.headers["cache-control"] == "private, max-age=300"
    assert client.get(path).content == first.content  # same items, same bytes
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(path, headers={"If-Modified-Since": modified}).status_code == 304

    make_item(db_session, "Police reform in Montenegro", themes=[taxo.policing],
              locations=[taxo.montenegro], ingested_at=utcnow())
    db_session.commit()
    fresh = client.get(path, headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert feedparser.parse(fresh.content).entries[0].title == "Police reform in Montenegro"
    assert client.get(path, headers={"If-Modified-Since": modified}).status_code == 200


def test_unreadable_if_modified_since_is_ignored(client, web_settings, newsroom):
    ann, _, _ = newsroom
    response = client.get(path_of(feed_url(ann.id, web_settings)),
                          headers={"If-Modified-Since": "yesterday-ish"})
    assert response.status_code == 200


def test_digest_footer_links_the_feed_in_both_parts(web_settings, newsroom):
    ann, _, wanted = newsroom
    factory = MessageFactory(web_settings)
    items = [RenderItem(id=i.id, title=i.title, url=i.url, summary=i.summary,
                        published_at=i.published_at, content_type=None, themes=("Policing",),
                        locations=()) for i in wanted]
    rendered = factory.render_for(ann, ann.email, "weekly", items)
    # Tokens carry the second they were signed: read the one the message carries (a token
    # signed here a second later would differ) and check it opens ann's feed.
    found = re.search(r'href="([^"]*/feed/([^"/]+)\.atom)"', rendered.html)
    assert found, "no feed link in the HTML part"
    url, token = found.groups()
    assert url.startswith(feed_url(ann.id, web_settings).split("/feed/")[0] + "/feed/")
    assert subscriber_from_token("feed", token, web_settings) == ann.id
    assert f"Your items as a feed (Atom): {url}" in rendered.text


def test_confirmation_email_has_no_feed_link(web_settings, newsroom):
    ann, _, _ = newsroom
    _, data = MessageFactory(web_settings).confirmation(ann, ["Policing"])
    assert b"/feed/" not in data


def test_preferences_page_links_the_feed_while_subscribed(
    client, web_settings, db_session, newsroom
):
    ann, _, _ = newsroom
    manage = path_of(links_for(ann.id, web_settings)["manage_url"])
    page = client.get(manage).text
    linked = re.findall(r'href="([^"]*/feed/[^"]+\.atom)"', page)
    assert len(linked) == 1 and _opens_feed_of(linked[0], web_settings) == ann.id
    unsubscribe(db_session, ann)
    db_session.commit()
    assert "/feed/" not in client.get(manage).text


def test_feed_bytes_and_etag_stay_the_same_when_the_signing_clock_moves(
    client, web_settings, db_session, taxo, newsroom, monkeypatch
):
    """The self link is the address the reader fetched, not a token signed afresh: a token
    minted a second later differs, and with it the bytes and the ETag a feed reader keeps."""
    import itsdangerous.timed

    ann, _, _ = newsroom
    path = path_of(feed_url(ann.id, web_settings))
    first = client.get(path)
    real_time = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real_time() + 3600)
    later = client.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert later.status_code == 304
    again = client.get(path)
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
