"""Render per distinct content (ADR 0028): readers of one content share its rendering,
encoding and DKIM work, and get exactly the bytes the plain path builds for each of them."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default

import pytest

from digest.mail import MessageFactory
from digest.mail import compose as compose_module
from digest.mail.compose import Reader
from digest.mail.mime import build_message
from digest.mail.shared import MARKS, SharedContents, shared_contents
from digest.models import Delivery, DigestRun, RunKind
from digest.render import RenderedEmail, RenderItem
from digest.render import renderer as renderer_module
from digest.settings import PROJECT_ROOT, Settings
from tests.factories import recipient

START = datetime(2025, 10, 9, 23, 30, tzinfo=UTC)
THEMES = ("Policing", "Gender equality", "Elections")


def items(n: int, first: int = 0) -> list[RenderItem]:
    return [RenderItem(
        id=i, title=f"Story {i} — «quoted» & <b>bold</b>" if i % 3 == 0 else f"Story {i}",
        url=f"https://newsroom.example.org/item/{i}",
        summary="Officers trained on evidence;  two  spaces and a tab\there. " * (1 + i % 3),
        published_at=START - timedelta(hours=7 * i), content_type="News",
        themes=(THEMES[i % 3],), locations=("Bishkek",)) for i in range(first, first + n)]


@pytest.fixture
def rsettings():
    return Settings(_env_file=None, templates_dir=PROJECT_ROOT / "templates",
                    newsroom_url="https://newsroom.example.org/news", max_items_per_digest=8)


@pytest.fixture(autouse=True)
def fixed_links(monkeypatch):
    """Links carry a signing time (seconds): made per reader and stable for both builds.
    The renderers start afresh too: the process-wide cache of renderers is emptied when it
    reaches 32 (one per settings object), and a renderer made again mid-test is another
    content (its id is in the key), which the counts below would read as a second miss."""
    shared_contents.clear()
    renderer_module._renderers.clear()
    monkeypatch.setattr(compose_module, "links_for", lambda sid, s: {
        "manage_url": f"https://digest.example.org/preferences/m{sid}.x{sid * 7}",
        "unsubscribe_url": f"https://digest.example.org/unsubscribe/u{sid}.y{sid * 3}",
        "feed_url": f"https://digest.example.org/feed/f{sid}.atom"})
    monkeypatch.setattr(compose_module, "view_url",
                        lambda s, did: f"https://digest.example.org/view/v{did}")
    yield
    shared_contents.clear()


# Addresses of every length the text part's reason line wraps differently for, with
# characters HTML escapes, and a non-ASCII one.
EMAILS = ["a@b.io", "Reader.One@example.org", "o'brien&co@example.org",
          "reader@exämple.org", "x" * 60 + "@long-domain.example.org",
          "medium.length.address@example.org", "q" * 30 + "@example.org"]


def delivery(n: int, email: str, *, zone="Asia/Tokyo", group_by="theme",
             themes=("Policing",)) -> Delivery:
    reader = Reader(id=100 + n, group_by=group_by, timezone=zone, themes=themes, locations=())
    return Delivery(id=50 + n, run_id=3, subscriber_id=reader.id, email=email,
                    subscriber=reader)


def same_date(data: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]+\r\n", b"\r\nDate: D\r\n", data)


def same_date_and_boundary(data: bytes) -> bytes:
    boundary = re.search(rb'boundary="([^"]+)"', data).group(1)
    return same_date(data.replace(boundary, b"B"))


def bodies(data: bytes) -> tuple[str, str]:
    msg = message_from_bytes(data, policy=default)
    return msg.get_body(("html",)).get_content(), msg.get_body(("plain",)).get_content()


RUN = DigestRun(id=3, kind=RunKind.weekly)


def test_readers_of_one_content_get_the_bytes_the_plain_path_builds(rsettings):
    shared, plain = MessageFactory(rsettings), MessageFactory(rsettings, fragments=False)
    shown = items(12)
    for _round in range(2):
        for n, address in enumerate(EMAILS):
            d = delivery(n, address)
            fast_id, fast = shared.build(d, RUN, shown)
            slow_id, slow = plain.build(d, RUN, shown)
            assert fast_id == slow_id
            assert same_date_and_boundary(fast) == same_date_and_boundary(slow), address
            body = fast.split(b"\r\n\r\n", 1)[1]
            assert all(len(line) <= 76 for line in body.split(b"\r\n"))
            body.decode("ascii")
    # One content: rendered once (a miss), filled in for every other message.
    assert (shared_contents.misses, len(shared_contents)) == (1, 1)
    assert shared_contents.hits == 2 * len(EMAILS) - 1
    # Filled in, not rendered whole: the templates' personal parts are all in the tail.
    assert all(c.shareable for c in shared_contents._contents.values())
    # Every message of the content uses the content's boundary (its encoded start is shared).
    boundaries = {re.search(rb'boundary="([^"]+)"', shared.build(delivery(n, a), RUN, shown)[1])
                  .group(1) for n, a in enumerate(EMAILS)}
    assert len(boundaries) == 1


def test_distinct_contents_never_share_a_body(rsettings):
    shared, plain = MessageFactory(rsettings), MessageFactory(rsettings, fragments=False)
    variants = [
        (delivery(1, "r@example.org"), items(12)),
        (delivery(1, "r@example.org"), items(12, first=1)),  # other items
        (delivery(1, "r@example.org"), items(12)[:-1]),  # one item fewer
        (delivery(1, "r@example.org", zone="UTC"), items(12)),  # dates on other days
        (delivery(1, "r@example.org", group_by="location"), items(12)),
        (delivery(1, "r@example.org", themes=("Elections",)), items(12)),  # "more" link, groups
        (delivery(1, "r@example.org", themes=()), items(12)),
    ]
    seen: list[tuple[str, str]] = []
    for d, shown in variants:
        fast = shared.build(d, RUN, shown)[1]
        slow = plain.build(d, RUN, shown)[1]
        assert same_date_and_boundary(fast) == same_date_and_boundary(slow)
        seen.append(bodies(fast))
    assert len(set(seen)) == len(variants)
    assert shared_contents.misses == len(variants) == len(shared_contents)
    # An edited item is another content too (items are keyed by value, not id).
    edited = [replace(items(12)[0], title="Corrected title"), *items(12)[1:]]
    html, _ = bodies(shared.build(variants[0][0], RUN, edited)[1])
    assert "Corrected title" in html


def test_an_immediate_alert_and_a_digest_of_one_item_are_different_contents(rsettings):
    shared = MessageFactory(rsettings)
    one = items(1)
    alert = bodies(shared.build(delivery(1, "r@example.org"), DigestRun(id=4, kind="immediate"),
                                one)[1])
    digest = bodies(shared.build(delivery(1, "r@example.org"), RUN, one)[1])
    assert alert != digest and len(shared_contents) == 2
    assert all(c.shareable for c in shared_contents._contents.values())


def test_personal_parts_never_leak_between_readers(rsettings):
    shared = MessageFactory(rsettings)
    shown = items(12)
    one, two = delivery(1, "one@example.org"), delivery(2, "two@example.org")
    data = {d.id: shared.build(d, RUN, shown)[1] for d in (one, two, one, two)}
    assert shared_contents.hits == 3
    for own, other in ((one, two), (two, one)):
        raw = data[own.id]
        html, text = bodies(raw)
        head = raw.split(b"\r\n\r\n", 1)[0].decode()
        for part in (html, text):
            assert own.email in part and other.email not in part
            for token in (f"m{own.subscriber_id}.", f"u{own.subscriber_id}.",
                          f"f{own.subscriber_id}.atom", f"/view/v{own.id}"):
                assert token in part
            for token in (f"m{other.subscriber_id}.", f"u{other.subscriber_id}.",
                          f"f{other.subscriber_id}.atom", f"/view/v{other.id}"):
                assert token not in part
            assert not any(mark in part for mark in MARKS.values())
        assert f"To: {own.email}" in head and other.email not in head
        assert f"/unsubscribe/u{own.subscriber_id}." in head
        assert f"/unsubscribe/u{other.subscriber_id}." not in head
        assert f"digest.3.{own.id}@" in head and f"digest.3.{other.id}@" not in head


def test_the_preview_paths_and_the_sent_message_are_byte_identical(rsettings):
    """``digest preview --delivery``, the admin's preview and explain and the API read
    ``render_delivery``, which is ``MessageFactory.render``; sending is ``build``. The
    rendering the preview shows, sealed with the sent message's headers, is the sent bytes."""
    factory = MessageFactory(rsettings)
    shown = items(12)
    for n, address in enumerate(EMAILS[:4]):
        d = delivery(n, address)
        _, sent = factory.build(d, RUN, shown)
        previewed = factory.render(d, RUN, shown)  # what render_delivery returns
        plain = MessageFactory(rsettings, shared=False).render(d, RUN, shown)
        assert previewed == plain
        html, text = bodies(sent)  # decoded: line ends as the parser gives them
        assert (html.replace("\r\n", "\n"), text.replace("\r\n", "\n")) == (
            previewed.html, previewed.text)
        links = compose_module.links_for(d.subscriber_id, rsettings)
        headers = factory.headers(d.subscriber_id, delivery=d,
                                  unsubscribe_url=links["unsubscribe_url"])
        assert same_date(factory.seal(d.email, previewed, headers)) == same_date(sent)


def test_the_web_preview_of_a_reader_is_what_they_are_sent(rsettings):
    """``digest.mail.preview`` (the CLI's ``digest preview EMAIL`` and the preferences page)
    renders through ``render_for`` too: the same content, its own "view" link."""
    factory = MessageFactory(rsettings)
    d = delivery(1, "reader@example.org")
    sent = factory.render(d, RUN, items(12))
    previewed = factory.render_for(d.subscriber, d.email, "weekly", items(12),
                                   view_url=compose_module.preview_view_url(rsettings))
    preview_link = compose_module.preview_view_url(rsettings)
    assert previewed.html.replace(preview_link, "https://digest.example.org/view/v51") == sent.html
    assert previewed.text.replace(preview_link, "https://digest.example.org/view/v51") == sent.text


def test_the_cache_keeps_at_most_its_size():
    cache = SharedContents(maxsize=3)

    def render(reader):
        return RenderedEmail(subject="s", html=f"<p>shared</p>\n<a>{reader.unsubscribe_url}</a>",
                             text=f"shared\n\nUnsubscribe: {reader.unsubscribe_url}\n")

    for key in range(10):
        out = cache.render(key, "renderer", recipient(unsubscribe_url=f"https://u/{key}"), render)
        assert out.text == f"shared\n\nUnsubscribe: https://u/{key}\n"
    assert len(cache) == 3 and cache.misses == 10
    cache.render(9, "renderer", recipient(unsubscribe_url="https://u/again"), render)
    assert cache.hits == 1
    # Another renderer (other settings or templates) never gets this one's content.
    cache.render(9, "other renderer", recipient(unsubscribe_url="https://u/x"), render)
    assert cache.misses == 11


def test_a_template_whose_personal_parts_do_not_fill_in_is_rendered_whole():
    cache = SharedContents()
    calls = []

    def render(reader):  # the address in the subject: nothing may be shared
        calls.append(reader.email)
        return RenderedEmail(subject=f"For {reader.email}", html=f"<p>{reader.email}</p>\n",
                             text=f"Hello {reader.email}\n")

    for address in ("a@example.org", "b@example.org"):
        out = cache.render("k", "r", recipient(email=address), render)
        assert out == render(recipient(email=address))
    assert calls.count("b@example.org") >= 1  # b rendered whole, not filled in


def test_wrapped_prose_around_the_address_is_wrapped_again():
    cache = SharedContents()

    def render(reader):
        from digest.render.text import wrap_text
        reason = (f"You receive this because {reader.email} asked for it, "
                  "and here are some more words to wrap around the address.")
        return RenderedEmail(subject="s", html="<p>x</p>\n", text=(
            f"Shared part\n\n{'-' * 40}\n{wrap_text(reason)}\n\nBye {reader.unsubscribe_url}\n"))

    for address in ("a@b.io", "x" * 50 + "@example.org", "m" * 20 + "@example.org"):
        reader = recipient(email=address, unsubscribe_url="https://u/1")
        assert cache.render("k", "r", reader, render) == render(reader)
    assert (cache.misses, cache.hits) == (1, 2)


def test_build_message_refuses_a_boundary_that_could_collide():
    from digest.errors import ValidationError

    with pytest.raises(ValidationError):
        build_message(from_addr="a@example.org", to_addr="b@example.org", subject="s",
                      html="h", text="t", message_id="<x@example.org>", boundary="plain")


def test_a_family_is_checked_once_and_a_failed_one_never_shared():
    cache = SharedContents()
    calls = []

    def good(reader):
        calls.append(reader.email)
        return RenderedEmail(subject="s", html=f"<p>shared</p>\n<a>{reader.unsubscribe_url}</a>",
                             text=f"shared\n\n{reader.email}\n")

    for key in range(3):  # three contents of one family: checked for the first only
        cache.render(key, "r", recipient(email=f"r{key}@example.org"), good, family="f")
    assert calls == ["zq" + calls[0][2:], "r0@example.org", "p@example.org",
                     "p" * 64 + "@example.org"] + calls[4:]
    assert len(calls) == 4 + 2  # then one stand-in each

    def bad(reader):
        return RenderedEmail(subject=f"For {reader.email}", html="<p>x</p>\n", text="x\n")

    cache.render("b1", "r", recipient(email="a@example.org"), bad, family="g")
    out = cache.render("b2", "r", recipient(email="b@example.org"), bad, family="g")
    assert out.subject == "For b@example.org"  # rendered whole, no stand-in tried
    assert "b2" not in cache._contents


@pytest.mark.parametrize("odd", ["a b@example.org", "a\u00a0b@example.org", "a\tb@example.org"])
def test_a_reader_whose_values_hold_whitespace_is_rendered_whole(odd):
    cache = SharedContents()

    def render(reader):
        from digest.render.text import wrap_text
        return RenderedEmail(subject="s", html="<p>x</p>\n",
                             text=f"x\n\n{wrap_text('To ' + reader.email)}\n")

    cache.render("k", "r", recipient(email="plain@example.org"), render)
    content = cache._contents["k"]
    assert content.shareable and content.fill(recipient(email=odd)) is None
    assert cache.render("k", "r", recipient(email=odd), render) == render(recipient(email=odd))
