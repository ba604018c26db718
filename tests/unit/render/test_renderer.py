"""Render stage: compile-once MJML, escaping, grouping, cap, size, text part, shared layout."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser

import pytest

from digest.errors import TemplateError, ValidationError
from digest.render import (
    EmailRenderer,
    RenderItem,
    get_renderer,
)
from digest.render import renderer as render  # its mjml2html is patched
from digest.settings import PROJECT_ROOT, Settings
from tests.factories import recipient

NEWSROOM = "https://newsroom.example.org/news"
START = datetime(2025, 10, 9, 12, tzinfo=UTC)
NASTY_TITLE = '<script>alert(1)</script> & "quotes"'
SHARED_FOOTER = "Sent by the OSCE Newsroom digest service."


@pytest.fixture
def rsettings():
    return Settings(_env_file=None, newsroom_url=NEWSROOM, newsroom_name="OSCE Newsroom",
                    templates_dir=PROJECT_ROOT / "templates", max_items_per_digest=20)


@pytest.fixture
def templates_copy(tmp_path):
    """A private copy of the templates, for tests that change one."""
    root = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", root)
    return root


def make_item(i: int, *, title: str | None = None, url: str | None = "default",
              themes=("Policing",), locations=("OSCE Mission to Montenegro",),
              summary: str = "The mission trained police officers on forensic evidence.",
              published_at: datetime | None = None,
              content_type: str | None = "News") -> RenderItem:
    return RenderItem(
        id=i,
        title=title or f"Item number {i}",
        url=f"https://newsroom.example.org/item/{i}" if url == "default" else url,
        summary=summary,
        published_at=published_at or START - timedelta(hours=i),
        content_type=content_type,
        themes=tuple(themes),
        locations=tuple(locations),
    )


class Parsed(HTMLParser):
    """Collects what the tests look at: tags, attributes, text by element class."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2[-1] += data

    def find(self, tag):
        return [a for t, a in self.tags if t == tag]


def group_names(parsed: Parsed) -> list[str]:
    return [re.sub(r"\s*\(\d+\)$", "", h.strip()) for h in parsed.h2]


# --- compile once ------------------------------------------------------------------------------

def test_mjml_is_compiled_once_however_many_messages_are_rendered(rsettings, monkeypatch):
    calls = []
    real = render.mjml2html

    def counting(source):
        calls.append(len(source))
        return real(source)  # the real compiler runs

    monkeypatch.setattr(render, "mjml2html", counting)
    renderer = EmailRenderer("digest", rsettings)
    assert len(calls) == 1
    items = [make_item(i) for i in range(10)]
    for n in range(50):
        email = renderer.render(recipient(subscriber_id=n, email=f"r{n}@example.org"), items)
        assert f"r{n}@example.org" in email.html
    assert len(calls) == 1


def test_get_renderer_reuses_one_renderer_per_settings(rsettings, monkeypatch):
    calls = []
    real = render.mjml2html
    monkeypatch.setattr(render, "mjml2html", lambda s: calls.append(1) or real(s))
    first = get_renderer("digest", rsettings)
    assert get_renderer("digest", rsettings) is first
    assert len(calls) == 1
    other = rsettings.model_copy(update={"newsroom_url": "https://x.example"})
    assert get_renderer("digest", other) is not first
    assert len(calls) == 2


# --- escaping -----------------------------------------------------------------------------------

def test_markup_in_data_is_escaped_in_html_and_readable_in_text(rsettings):
    item = make_item(1, title=NASTY_TITLE, summary='Fish & chips <b>"fresh"</b>')
    email = EmailRenderer("digest", rsettings).render(recipient(), [item])
    parsed = Parsed(email.html)
    assert parsed.find("script") == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quotes&#34;" in email.html
    assert NASTY_TITLE in "".join(parsed.text)  # what a reader sees
    assert NASTY_TITLE in email.text
    assert 'Fish & chips "fresh"' in email.text
    assert not re.search(r"&(#\d+|#x[0-9a-f]+|[a-z]+);", email.text, re.I)


def test_data_that_looks_like_mjml_or_jinja_cannot_change_the_email(rsettings):
    title = "</mj-text></mj-column><mj-raw>{{ 7 * 7 }}{% if x %}</mj-raw> a < b"
    email = EmailRenderer("digest", rsettings).render(recipient(), [make_item(1, title=title)])
    assert "49" not in email.html
    assert "&lt;/mj-text&gt;&lt;/mj-column&gt;&lt;mj-raw&gt;{{ 7 * 7 }}{% if x %}" in email.html
    assert title in email.text


def test_subject_collapses_newlines_from_templates_and_data(rsettings):
    item = make_item(1, title="Line one\r\nBcc: victim@example.org\n  more")
    email = EmailRenderer("alert", rsettings).render(recipient(), [item])
    assert "\r" not in email.subject and "\n" not in email.subject
    assert email.subject == "OSCE Newsroom: Line one Bcc: victim@example.org more"


# --- digest content ----------------------------------------------------------------------------

def test_digest_groups_by_theme_and_lists_a_multi_theme_item_once_under_the_chosen_theme(rsettings):
    items = [
        make_item(1, themes=("Policing", "Gender equality"), title="Both themes"),
        make_item(2, themes=("Policing",), title="Policing only"),
        make_item(3, themes=("Elections",), title="Elections only"),
        make_item(4, themes=(), title="No theme"),
    ]
    who = recipient(themes=("Gender equality", "Elections"))
    email = EmailRenderer("digest", rsettings).render(who, items)
    parsed = Parsed(email.html)
    assert group_names(parsed) == ["Elections", "Gender equality", "Policing", "Other news"]
    for title in ("Both themes", "Policing only", "Elections only", "No theme"):
        assert email.html.count(title) == 1
        assert email.text.count(title) == 1
    # "Both themes" sits under the theme the reader chose, not under its first theme.
    text = email.text
    assert (text.index("Gender equality (1)") < text.index("Both themes")
            < text.index("Policing (1)"))
    assert "4 new items in 3 of your themes" in email.html


def test_digest_groups_by_location_when_the_reader_asks(rsettings):
    items = [
        make_item(1, locations=("OSCE Mission to Serbia",), themes=("Policing",)),
        make_item(2, locations=("OSCE Mission in Kosovo", "OSCE Mission to Serbia")),
        make_item(3, locations=("OSCE Mission in Kosovo",), themes=("Policing",)),
    ]
    email = EmailRenderer("digest", rsettings).render(recipient(group_by="location"), items)
    assert group_names(Parsed(email.html)) == ["OSCE Mission in Kosovo", "OSCE Mission to Serbia"]
    assert "3 new items in 2 locations" in email.text
    assert "Policing" in email.text  # themes still shown as labels


def test_unknown_group_by_is_a_clear_error(rsettings):
    with pytest.raises(ValidationError, match="group_by must be 'theme' or 'location'"):
        EmailRenderer("digest", rsettings).render(recipient(group_by="colour"), [make_item(1)])


def test_digest_caps_items_and_links_the_rest_with_and_k_more(rsettings):
    s = rsettings.model_copy(update={"max_items_per_digest": 5})
    items = [make_item(i) for i in range(8)]  # item 0 is the newest
    renderer = EmailRenderer("digest", s)
    more_url = "https://newsroom.example.org/news?theme=policing"
    email = renderer.render(recipient(), items, more_url=more_url)
    assert "Item number 4" in email.html and "Item number 5" not in email.html
    assert "and 3 more in the newsroom" in email.html
    more = [a["href"] for a in Parsed(email.html).find("a") if "theme=" in a.get("href", "")]
    assert more == [more_url]
    assert f"...and 3 more in the newsroom: {more_url}" in email.text
    assert email.subject.startswith("Your OSCE Newsroom digest: 8 new items")
    # Without more_url the link goes to the newsroom.
    plain = renderer.render(recipient(), items)
    assert f"...and 3 more in the newsroom: {NEWSROOM}" in plain.text
    # Under the cap there is no "more" line at all.
    assert "more in the newsroom" not in renderer.render(recipient(), items[:5]).html


def test_two_hundred_items_stay_under_gmails_clipping_limit(rsettings):
    long_summary = ("Security and justice can only be achieved when institutions co-operate "
                    "across the entire chain, from investigation to prosecution. ") * 10
    many_themes = tuple(f"Theme number {n} of the long list" for n in range(18))
    items = [make_item(i, title="OSCE Ambassador highlights key security and social progress "
                                f"during visit number {i} to Tuzla, Vukosavlje and Odžak",
                       summary=long_summary, themes=many_themes,
                       locations=("Transnational Threats Department", "OSCE Secretariat",
                                  "OSCE Mission to Serbia"))
             for i in range(200)]
    email = EmailRenderer("digest", rsettings).render(recipient(), items,
                                                      period_start=date(2025, 10, 2),
                                                      period_end=date(2025, 10, 9))
    assert len(email.html.encode()) < 102 * 1024
    assert email.html.count("https://newsroom.example.org/item/") == 20
    assert "and 180 more" in email.html


def test_summary_line_subject_and_period(rsettings):
    items = [make_item(i, themes=(("Policing", "Elections", "Youth")[i % 3],)) for i in range(12)]
    who = recipient(themes=("Policing", "Elections", "Youth"))
    email = EmailRenderer("digest", rsettings).render(who, items, period_start=date(2025, 10, 2),
                                                      period_end=date(2025, 10, 9))
    assert "12 new items in 3 of your themes, 2\u20139 October 2025" in email.html
    assert email.subject == "Your OSCE Newsroom digest: 12 new items (2\u20139 Oct 2025)"
    across = EmailRenderer("digest", rsettings).render(
        recipient(), items[:1], period_start=date(2025, 9, 28), period_end=date(2025, 10, 5))
    assert "1 new item in 1 theme, 28 September \u2013 5 October 2025" in across.text
    assert across.subject == "Your OSCE Newsroom digest: 1 new item (28 Sep \u2013 5 Oct 2025)"


def test_reversed_period_is_a_clear_error(rsettings):
    with pytest.raises(ValidationError, match="period_start 2025-10-09 is after period_end"):
        EmailRenderer("digest", rsettings).render(recipient(), [make_item(1)],
                                                  period_start=date(2025, 10, 9),
                                                  period_end=date(2025, 10, 2))


def test_item_shows_date_in_readers_time_zone_type_location_and_themes(rsettings):
    item = make_item(1, published_at=datetime(2025, 10, 9, 23, 30, tzinfo=UTC),
                     content_type="Press release", themes=("Policing", "Youth"))
    renderer = EmailRenderer("digest", rsettings)
    vienna = renderer.render(recipient(timezone="Europe/Vienna"), [item])
    assert "10 October 2025 \u00b7 Press release \u00b7 OSCE Mission to Montenegro" in vienna.text
    assert "Themes: Policing, Youth" in vienna.text
    assert "10 October 2025 \u00b7 Press release" in vienna.html
    utc = renderer.render(recipient(), [item])
    assert "9 October 2025 \u00b7 Press release" in utc.text


def test_unknown_time_zone_is_a_clear_error(rsettings):
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        EmailRenderer("digest", rsettings).render(recipient(timezone="Mars/Olympus"),
                                                  [make_item(1)])


def test_long_summary_is_cut_on_a_word_boundary_and_html_in_it_is_dropped(rsettings):
    summary = "<p>" + " ".join(f"word{n}" for n in range(200)) + "</p>"
    email = EmailRenderer("digest", rsettings).render(recipient(), [make_item(1, summary=summary)])
    shown = re.search(r"(word0 .*?\u2026)", email.text.replace("\n", " ")).group(1)
    assert len(shown) <= 301
    assert re.fullmatch(r"(word\d+ )*word\d+\u2026", shown)
    assert "&lt;p&gt;" not in email.html and "<p>word0" not in email.html


def test_missing_or_unsafe_item_url_falls_back_to_the_newsroom(rsettings):
    items = [make_item(1, url=None, title="No link"),
             make_item(2, url="javascript:alert(1)", title="Bad link")]
    email = EmailRenderer("digest", rsettings).render(recipient(), items)
    titles = {}
    parsed = Parsed(email.html)
    hrefs = [a["href"] for a in parsed.find("a")]
    assert "javascript:alert(1)" not in email.html
    assert hrefs.count(NEWSROOM) >= 3  # two items + the footer's newsroom link
    for title in ("No link", "Bad link"):
        block = email.text[email.text.index(title):].split("\n\n")[0]
        titles[title] = block.splitlines()[-1]
    assert titles == {"No link": NEWSROOM, "Bad link": NEWSROOM}


def test_text_part_has_item_urls_and_footer_links_and_wraps_at_72(rsettings):
    summary = "A rather long summary sentence that goes on. " * 8
    items = [make_item(i, summary=summary) for i in range(3)]
    email = EmailRenderer("digest", rsettings).render(recipient(), items)
    for i in range(3):
        assert f"https://newsroom.example.org/item/{i}" in email.text
    assert "Manage your preferences: https://digest.example.org/manage/tok-m" in email.text
    assert "Unsubscribe: https://digest.example.org/unsubscribe/tok-u" in email.text
    assert "View in browser: https://digest.example.org/view/tok-v" in email.text
    for line in email.text.splitlines():
        assert len(line) <= 72 or "://" in line, line
        assert line == line.rstrip(), f"trailing space in {line!r}"
    assert "<" not in email.text and "\n\n\n" not in email.text


def test_html_is_well_formed_email_with_lang_color_scheme_and_preheader(rsettings):
    items = [make_item(i, themes=(("Policing", "Gender equality")[i % 2],)) for i in range(10)]
    email = EmailRenderer("digest", rsettings).render(recipient(), items,
                                                      period_start=date(2025, 10, 2),
                                                      period_end=date(2025, 10, 9))
    parsed = Parsed(email.html)
    assert parsed.find("html")[0]["lang"] == "en"
    metas = {m.get("name"): m.get("content") for m in parsed.find("meta")}
    assert metas["color-scheme"] == "light dark"
    assert metas["supported-color-schemes"] == "light dark"
    assert metas["viewport"].startswith("width=device-width")
    assert "prefers-color-scheme: dark" in email.html
    # The preheader is the first text in the body (inside MJML's wrapper), hidden, and not
    # painted in the background colour, which spam filters score as hidden text.
    body_start = email.html.index("<body")
    preheader = "10 new items in 2 themes, 2\u20139 October 2025"
    found = re.match(rf'<body[^>]*>(?:<div [^>]*>)?<div class="preheader" '
                     rf'style="(display:none;[^"]*)">{preheader}</div>', email.html[body_start:])
    assert found and "color" not in found.group(1)
    assert all(img.get("alt") for img in parsed.find("img"))
    assert "googleapis" not in email.html and "<link" not in email.html  # nothing remote to load
    links = {a["href"] for a in parsed.find("a")}
    assert {"https://digest.example.org/manage/tok-m",
            "https://digest.example.org/unsubscribe/tok-u",
            "https://digest.example.org/view/tok-v"} <= links
    # For a human to look at.
    out = PROJECT_ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "digest-sample.html").write_text(email.html, encoding="utf-8")
    (out / "digest-sample.txt").write_text(email.text, encoding="utf-8")


def test_view_in_browser_link_only_when_there_is_a_view_url(rsettings):
    email = EmailRenderer("digest", rsettings).render(recipient(view_url=None), [make_item(1)])
    assert "View in browser" not in email.html and "View in browser" not in email.text


# --- confirmation, alert, shared layout ---------------------------------------------------------

def test_confirm_email_lists_filters_and_links_the_confirm_url(rsettings):
    email = EmailRenderer("confirm", rsettings).render(
        recipient(manage_url="", unsubscribe_url="", view_url=None),
        confirm_url="https://digest.example.org/confirm/tok-c?x=1&y=2",
        filters=["Themes: Policing", "Locations: <OSCE Mission to Serbia>"],
    )
    assert email.subject == "Confirm your subscription to the OSCE Newsroom digest"
    hrefs = [a["href"] for a in Parsed(email.html).find("a")]
    assert hrefs.count("https://digest.example.org/confirm/tok-c?x=1&y=2") == 2  # button + link
    assert "&lt;OSCE Mission to Serbia&gt;" in email.html
    assert "  - Locations: <OSCE Mission to Serbia>" in email.text
    assert "https://digest.example.org/confirm/tok-c?x=1&y=2" in email.text
    assert "Unsubscribe" not in email.html  # nothing to leave yet


def test_confirm_email_without_confirm_url_is_a_clear_error(rsettings):
    with pytest.raises(TemplateError, match="'confirm'.*confirm_url"):
        EmailRenderer("confirm", rsettings).render(recipient())


def test_alert_email_carries_one_item(rsettings):
    renderer = EmailRenderer("alert", rsettings)
    email = renderer.render(recipient(), [make_item(3, title="Alert title")])
    assert email.subject == "OSCE Newsroom: Alert title"
    assert "Read the full story: https://newsroom.example.org/item/3" in email.text
    assert 'href="https://newsroom.example.org/item/3"' in email.html
    with pytest.raises(ValidationError, match="exactly one item, got 2"):
        renderer.render(recipient(), [make_item(1), make_item(2)])


def test_digest_confirm_and_alert_share_one_footer_partial(rsettings, templates_copy):
    def all_three(settings):
        who = recipient()
        return [
            EmailRenderer("digest", settings).render(who, [make_item(1)]),
            EmailRenderer("confirm", settings).render(who, confirm_url="https://c.example/x"),
            EmailRenderer("alert", settings).render(who, [make_item(1)]),
        ]

    for mail in all_three(rsettings):
        assert SHARED_FOOTER in mail.html and SHARED_FOOTER in mail.text
        assert "https://digest.example.org/unsubscribe/tok-u" in mail.html
    # Change the one partial: every email changes with it (shared, not copied).
    footer = templates_copy / "email" / "_partials" / "footer.mjml"
    footer.write_text(footer.read_text().replace("digest service.", "digest service. FOOTER-MARK"))
    changed = rsettings.model_copy(update={"templates_dir": templates_copy})
    for mail in all_three(changed):
        assert "FOOTER-MARK" in mail.html


# --- bad templates -----------------------------------------------------------------------------

def test_invalid_mjml_is_a_clear_error_when_the_renderer_is_built(rsettings, templates_copy):
    body = templates_copy / "email" / "digest" / "body.mjml"
    body.write_text(body.read_text().replace("{{ summary_line }}", "{{ summary_line }} a < b", 1))
    with pytest.raises(TemplateError, match=r"digest/body.mjml is not valid MJML .*bare '<'"):
        EmailRenderer("digest", rsettings.model_copy(update={"templates_dir": templates_copy}))


def test_broken_layout_tag_is_a_clear_error(rsettings, templates_copy):
    body = templates_copy / "email" / "alert" / "body.mjml"
    body.write_text(body.read_text().replace("[% endblock %]", ""))
    with pytest.raises(TemplateError, match=r"alert/body.mjml, line \d+: layout tag error"):
        EmailRenderer("alert", rsettings.model_copy(update={"templates_dir": templates_copy}))


def test_css_that_starts_a_jinja_tag_is_a_clear_error(rsettings, templates_copy):
    head = templates_copy / "email" / "_partials" / "head.mjml"
    head.write_text(head.read_text().replace(":root {", ":root{#x {", 1))
    with pytest.raises(TemplateError, match="not a valid Jinja template"):
        EmailRenderer("digest", rsettings.model_copy(update={"templates_dir": templates_copy}))


def test_unknown_template_name_is_a_clear_error(rsettings):
    with pytest.raises(TemplateError, match="email template 'newsletter' not found"):
        EmailRenderer("newsletter", rsettings)


def test_missing_text_part_is_a_clear_error(rsettings, templates_copy):
    (templates_copy / "email" / "alert" / "body.txt").unlink()
    with pytest.raises(TemplateError, match="alert/body.txt is missing"):
        EmailRenderer("alert", rsettings.model_copy(update={"templates_dir": templates_copy}))
