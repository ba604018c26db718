"""A long digest reads with a screen reader: a table of contents once there are more than
TOC_AFTER_GROUPS groups (in the HTML, links to each group's heading; in the text part, the
list of groups), and every email's body in landmarks: the masthead a banner, the content
the one main, the footer contentinfo. axe-core checks the sent demo digest in Chromium
(tests/system/test_accessibility.py); these check the structure on any digest."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from digest.render import EmailRenderer, RenderItem
from digest.render.renderer import TOC_AFTER_GROUPS
from digest.settings import PROJECT_ROOT, Settings
from tests.factories import recipient

THEMES = ["Elections", "Gender equality", "Policing", "Media freedom", "Water"]
START = datetime(2025, 10, 9, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def renderers():
    s = Settings(_env_file=None, templates_dir=PROJECT_ROOT / "templates")
    return {name: EmailRenderer(name, s) for name in ("digest", "alert", "confirm")}


def items_in(themes: list[str]) -> list[RenderItem]:
    return [RenderItem(id=n, title=f"Item {n}", url=f"https://newsroom.example.org/{n}",
                       summary="A summary.", published_at=START - timedelta(hours=n),
                       content_type="News", themes=(theme,), locations=())
            for n, theme in enumerate(themes * 2)]


def test_digest_with_more_than_the_threshold_of_groups_opens_with_links_to_each_group(renderers):
    themes = THEMES[:TOC_AFTER_GROUPS + 1]
    email = renderers["digest"].render(recipient(), items_in(themes))
    toc = re.search(r"<nav aria-labelledby=\"toc-title\">(.*?)</nav>", email.html, re.S)
    assert toc, "no table of contents"
    links = re.findall(r'href="#(group-\d+)"[^>]*>([^<]+)</a>', toc.group(1))
    headings = re.findall(r'<h2 id="(group-\d+)"[^>]*>([^<]+?) <span', email.html)
    assert [name for _, name in links] == sorted(themes)
    assert links == headings  # each link lands on its group's heading, in order
    assert len({anchor for anchor, _ in headings}) == len(headings)
    # The contents come before the first group.
    assert email.html.index("toc-title") < email.html.index('id="group-1"')
    text = email.text
    listed = text[text.index("In this digest:"):text.index(f"{sorted(themes)[0]} (2)")]
    assert [line for line in listed.splitlines() if line.startswith("- ")] == [
        f"- {theme}: 2 items" for theme in sorted(themes)]


def test_short_digest_has_no_table_of_contents(renderers):
    email = renderers["digest"].render(recipient(), items_in(THEMES[:TOC_AFTER_GROUPS]))
    assert "toc-title" not in email.html and "In this digest" not in email.text
    assert 'id="group-1"' in email.html  # the anchors are there anyway


@pytest.mark.parametrize("name", ["digest", "alert", "confirm"])
def test_every_email_has_one_main_landmark_between_banner_and_contentinfo(renderers, name):
    items = items_in(THEMES[:1])[:1] if name != "digest" else items_in(THEMES)
    context = {"confirm_url": "https://digest.example.org/confirm/t"} if name == "confirm" else {}
    html = renderers[name].render(recipient(), items if name != "confirm" else (), **context).html
    roles = re.findall(r'<div role="(banner|main|contentinfo)"', html)
    assert roles == ["banner", "main", "contentinfo"]
    main = html[html.index('<div role="main">'):html.index('<div role="contentinfo">')]
    assert "<h1" in main  # the heading a reader jumps to is inside main
    assert html.count("<div") == html.count("</div")  # the wrappers are closed
    # MJML's label on its outer div would sit outside every landmark (axe: region).
    assert not re.search(r'aria-label="[^"]*"[^>]*aria-roledescription="email"', html)
    assert re.search(r"<title>[^<]+</title>", html)  # the subject stays the document's title
