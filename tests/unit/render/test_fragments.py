"""Item blocks rendered and encoded once: the message is the one built without any cache."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.mail import MessageFactory
from digest.mail import compose as compose_module
from digest.mail.mime import _quoted_printable
from digest.models import (
    Delivery,
    DigestRun,
    Location,
    RunKind,
    Subscriber,
    SubscriberFilter,
    Theme,
)
from digest.render import EmailRenderer, RenderItem
from digest.render.fragments import Fragment, FragmentCache
from digest.settings import PROJECT_ROOT, Settings
from tests.factories import recipient

START = datetime(2025, 10, 9, 23, 30, tzinfo=UTC)  # a day later east of UTC
NASTY = ['</mj-text><script>alert(1)</script>', 'Ünïcödé — “quotes” & <b>bold</b>',
         "=?utf-8?q?not_a_word?= . \t trailing  "]
THEMES = ("Policing", "Gender equality", "Elections", "Rule of law")
PLACES = ("OSCE Mission to Montenegro", "Bishkek", "Serbia")


def items(n: int) -> list[RenderItem]:
    return [
        RenderItem(
            id=i, title=NASTY[i % 3] + f" {i}" if i % 4 == 0 else f"Story number {i}",
            url=f"https://newsroom.example.org/item/{i}" if i % 5 else "javascript:alert(1)",
            summary=("<p>Officers trained on evidence; «Trust is built locally», said the "
                     "Head of Mission. </p>" * (1 + i % 4)),
            published_at=None if i == 7 else START - timedelta(hours=5 * i),
            content_type="News" if i % 2 else None,
            themes=(THEMES[i % 4], THEMES[(i + 1) % 4]) if i % 6 else (),
            locations=(PLACES[i % 3],),
        )
        for i in range(n)
    ]


@pytest.fixture
def rsettings():
    return Settings(_env_file=None, templates_dir=PROJECT_ROOT / "templates",
                    newsroom_url="https://newsroom.example.org/news", max_items_per_digest=12)


READERS = [  # (time zone, group_by, chosen themes, chosen places, number of items)
    ("UTC", "theme", ("Policing",), (), 30),
    ("Asia/Tokyo", "theme", (), (), 30),
    ("America/Los_Angeles", "location", (), ("Bishkek",), 30),
    ("Europe/Vienna", "location", (), (), 5),  # under the cap: no "more" line
    ("Asia/Tokyo", "theme", ("Elections", "Gender equality"), ("Serbia",), 1),
]


def subscriber(n: int, zone: str, group_by: str, themes, places) -> Subscriber:
    chosen = SubscriberFilter(themes=[Theme(name=t) for t in themes],
                              locations=[Location(name=p) for p in places])
    return Subscriber(id=100 + n, email=f"reader{n}@exämple.org" if n == 4 else
                      f"Reader{n}@example.org", timezone=zone, group_by=group_by,
                      filters=[chosen])


def parsed(data: bytes):
    msg = message_from_bytes(data, policy=default)
    return msg, msg.get_body(("html",)).get_content(), msg.get_body(("plain",)).get_content()


def same_date_and_boundary(data: bytes) -> bytes:
    boundary = re.search(rb'boundary="([^"]+)"', data).group(1)
    data = re.sub(rb"\r\nDate: [^\r]+\r\n", b"\r\nDate: D\r\n", data.replace(boundary, b"B"))
    return data


def test_messages_built_through_the_caches_are_the_messages_built_without(
        rsettings, monkeypatch):
    # Links carry a signing time: made the same for both builds.
    monkeypatch.setattr(compose_module, "links_for", lambda sid, s: {
        "manage_url": f"https://digest.example.org/preferences/m{sid}",
        "unsubscribe_url": f"https://digest.example.org/unsubscribe/u{sid}"})
    monkeypatch.setattr(compose_module, "view_url", lambda s, did: f"https://d.example/v/{did}")
    cached, plain = MessageFactory(rsettings), MessageFactory(rsettings, fragments=False)
    run = DigestRun(id=3, kind=RunKind.weekly)
    every = items(30)
    for _round in range(2):  # the second round is served from the caches
        for n, (zone, group_by, themes, places, count) in enumerate(READERS):
            sub = subscriber(n, zone, group_by, themes, places)
            delivery = Delivery(id=50 + n, run_id=3, subscriber_id=sub.id, email=sub.email,
                                subscriber=sub)
            shown = every[:count]
            fast_id, fast = cached.build(delivery, run, shown)
            slow_id, slow = plain.build(delivery, run, shown)
            assert fast_id == slow_id
            assert same_date_and_boundary(fast) == same_date_and_boundary(slow)
            (msg, html, text), (ref, ref_html, ref_text) = parsed(fast), parsed(slow)
            assert (html, text) == (ref_html, ref_text)
            assert [(k, v) for k, v in msg.items() if k not in ("Date", "Content-Type")] == [
                (k, v) for k, v in ref.items() if k not in ("Date", "Content-Type")]
            assert all(len(line) <= 76 for line in fast.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))
            fast.decode("ascii")  # 7-bit
            if count > 12:
                assert "more in the newsroom" in text
    # Without the per-content layer (ADR 0028) the renderer reports each item block it used.
    # (Here the shared starts were encoded whole: the blocks' own encodings come with the
    # first message built block by block.)
    per_reader = MessageFactory(rsettings, shared=False)
    reader = subscriber(0, *READERS[0][:4])
    per_reader.build(Delivery(id=49, run_id=3, subscriber_id=reader.id, email=reader.email,
                              subscriber=reader), run, every)
    rendered = per_reader.render_for(reader, "r@example.org", "weekly", every)
    assert len(rendered.html_fragments) == len(rendered.text_fragments) == 12
    assert all(f.encoded for f in rendered.html_fragments + rendered.text_fragments)
    # With it, a reader of a content already sent gets its shared start, encoded once.
    rendered = cached.render_for(subscriber(0, *READERS[0][:4]), "r@example.org", "weekly",
                                 every, view_url="https://d.example/v/1")
    assert len(rendered.html_fragments) == len(rendered.text_fragments) == 1
    assert all(0 in f.encoded for f in rendered.html_fragments + rendered.text_fragments)


def test_a_cached_item_block_is_escaped_as_a_rendered_one(rsettings):
    renderer = EmailRenderer("digest", rsettings)
    reader = recipient(timezone="Asia/Tokyo")
    first, again = (renderer.render(reader, items(9)) for _ in range(2))
    plain = EmailRenderer("digest", rsettings, fragments=False).render(reader, items(9))
    assert first == again == plain
    assert "<script>" not in again.html and "&lt;script&gt;" in again.html
    assert "&lt;/mj-text&gt;" in again.html
    assert "<script>alert(1)</script>" in again.text  # the text part is not HTML
    # Item 0 was published on 9 October UTC, 10 October in Tokyo.
    assert "10 October 2025" in again.text


def test_the_fragment_cache_keeps_at_most_its_size():
    cache = FragmentCache(maxsize=3)
    for key in range(10):
        cache.get(key, lambda key=key: f"block {key}\n")
    assert len(cache) == 3
    assert cache.get(9, lambda: "rendered again").text == "block 9\n"
    assert cache.get(0, lambda: "rendered again").text == "rendered again"


def test_without_the_cache_the_renderer_reports_no_fragments(rsettings):
    email = EmailRenderer("digest", rsettings, fragments=False).render(recipient(), items(4))
    assert email.html_fragments == email.text_fragments == ()


lines = st.text(st.sampled_from(list("ab =.\t\u00e9\u2014\r") + ["\n"]), max_size=120)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(lines, lines), max_size=6), lines)
def test_a_body_encodes_alike_with_and_without_its_fragments(pairs, tail):
    body = "".join(personal + block for personal, block in pairs) + tail
    fragments = [Fragment(block) for _, block in pairs if block]
    expected = _quoted_printable(body)
    assert _quoted_printable(body, fragments) == expected
    assert _quoted_printable(body, fragments) == expected  # from the kept encodings
