"""The newsroom's listing in its two forms (the HTML page, the text form), read defensively:
each damaged item left out with a warning naming its line, the rest kept."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from digest.errors import IngestError
from digest.ingest import parse_listing
from digest.ingest.listing import read_listing_document, read_listing_text
from digest.ingest.listing_html import read_listing_html
from digest.ingest.parsed import ItemIn
from digest.ingest.store import is_less_complete
from tests.conftest import SEED_LISTING, TEST_DATA

PAGE_URL = "https://www.osce.org/newsroom"
HTML_PAGE = TEST_DATA / "osce-newsroom-2025-10.html"
HTML_PAGE_2 = TEST_DATA / "osce-newsroom-2025-10-page2.html"
DAMAGED = TEST_DATA / "listing-damaged"
FIELDS = ("guid", "title", "summary", "published_at", "content_type", "themes", "locations")


def html_page(articles: str, extra: str = "") -> bytes:
    return (f"<!DOCTYPE html><html><head><title>Newsroom</title>{extra}</head><body>"
            f"<header><nav><a href='/what-we-do'>What we do</a></nav></header><main>"
            f"{articles}</main><footer><p>Publishing date of this site: 2025</p></footer>"
            "</body></html>").encode()


def article(title: str = "Title", href: str = "/items/1", date: str = "1 October 2025",
            more: str = "") -> str:
    return (f"<article><h3><a href=\"{href}\">{title}</a></h3>"
            f"<div><span>Publishing date:</span> <time>{date}</time></div>{more}"
            "<p>Summary.</p></article>")


# --- the HTML page ------------------------------------------------------------------------


def test_the_html_page_gives_the_same_items_as_the_text_form_with_their_links():
    page = read_listing_document(HTML_PAGE.read_bytes(), content_type="text/html; charset=utf-8",
                                 base_url=PAGE_URL)
    text = parse_listing(SEED_LISTING.read_text(encoding="utf-8"))

    assert page.warnings == []
    assert len(page.items) == len(text) == 7
    for from_html, from_text in zip(page.items, text, strict=True):
        assert [getattr(from_html, f) for f in FIELDS] == [getattr(from_text, f) for f in FIELDS]
    assert [item.url for item in page.items][:2] == [
        "https://www.osce.org/mission-to-montenegro/599712",
        "https://www.osce.org/secretariat/599654",
    ]
    assert all(item.url and item.url.startswith("https://www.osce.org/") for item in page.items)
    assert page.items[4].locations == [
        "Transnational Threats Department", "OSCE Secretariat", "OSCE Mission to Serbia"
    ]


def test_the_html_page_gives_the_pagers_next_page_and_the_last_page_none():
    first = read_listing_document(HTML_PAGE.read_bytes(), base_url=PAGE_URL)
    assert first.next_page_url == "https://www.osce.org/newsroom?page=1"
    last = read_listing_document(HTML_PAGE_2.read_bytes(), base_url=first.next_page_url)
    assert last.next_page_url is None
    assert [item.content_type for item in last.items] == ["News", "Press release"]


@pytest.mark.parametrize("pager", [
    "<link rel='next' href='/newsroom?page=2'>",
    "<ul><li class='pager__item pager__item--next'><a href='/newsroom?page=2'>›</a></li></ul>",
    "<p><a href='/newsroom?page=2'>Next ›</a></p>",
])
def test_a_next_page_is_found_by_rel_by_the_pagers_class_or_by_its_words(pager):
    page = read_listing_html(html_page(article() + pager), base_url=PAGE_URL)
    assert page.next_page_url == "https://www.osce.org/newsroom?page=2"


def test_links_resolve_against_the_page_or_its_base_and_only_http_links_are_kept():
    body = html_page(article("One", "items/1") + article("Two", "javascript:alert(1)")
                     + article("Three", "mailto:press@example.org"))
    page = read_listing_html(body, base_url="https://newsroom.example.org/news/")
    assert [item.url for item in page.items] == [
        "https://newsroom.example.org/news/items/1", None, None
    ]
    based = read_listing_html(
        html_page(article("One", "items/1"), "<base href='https://mirror.example.org/n/'>"),
        base_url=PAGE_URL)
    assert based.items[0].url == "https://mirror.example.org/n/items/1"
    assert read_listing_html(html_page(article())).items[0].url is None  # no page address
    saved = html_page(article(), "<link rel='canonical' href='https://www.osce.org/newsroom'>")
    assert read_listing_html(saved).items[0].url == "https://www.osce.org/items/1"


def test_markup_and_script_in_an_html_title_and_summary_become_plain_text():
    body = html_page(
        "<article><h3><a href='/x'><script>alert(1)</script><b>Bold</b> &amp; plain</a></h3>"
        "<div>Publishing date: 2 October 2025</div>"
        "<div class='body'><p>One <i>para</i>.</p><style>p{}</style><p>Two.</p></div>"
        "<a href='/x'>Read more<span class='visually-hidden'> about Bold</span></a></article>")
    item = read_listing_html(body, base_url=PAGE_URL).items[0]
    assert item.title == "Bold & plain"
    assert item.summary == "One para. Two."
    assert item.published_at == datetime(2025, 10, 2, tzinfo=UTC)


def test_an_items_article_is_its_block_even_with_a_sub_heading_nearer_its_date():
    body = html_page("<article><h3><a href='/a'>The title</a></h3><div class='meta'>"
                     "<h4>Details</h4><span>Publishing date:</span> 3 October 2025</div>"
                     "<p>Summary.</p></article>")
    item = read_listing_html(body, base_url=PAGE_URL).items[0]
    assert (item.title, item.url) == ("The title", "https://www.osce.org/a")
    assert item.summary == "Details Summary."


def test_labels_inline_with_their_value_and_list_values_are_read():
    body = html_page(article(more=(
        "<p><strong>Content type:</strong> Press release</p>"
        "<dl><dt>Where we are</dt><dd><ul><li>OSCE Mission to Serbia</li><li>ODIHR</li></ul></dd>"
        "<dt>What we do</dt><dd>Youth, Elections</dd></dl>")))
    item = read_listing_html(body, base_url=PAGE_URL).items[0]
    assert item.content_type == "Press release"
    assert item.locations == ["OSCE Mission to Serbia", "ODIHR"]
    assert item.themes == ["Youth", "Elections"]
    assert item.summary == "Summary."


def test_a_page_that_is_not_a_listing_is_refused_with_what_a_listing_looks_like():
    with pytest.raises(IngestError, match="no items found in the HTML listing page: an item is"):
        read_listing_html(html_page("<h1>About us</h1><p>We are a newsroom.</p>"))
    with pytest.raises(IngestError, match="empty"):
        read_listing_html(b"   ")


def test_an_html_item_without_a_date_is_left_out_with_a_warning_naming_its_line():
    body = html_page(article("Good") + "\n\n<article><h3><a href='/y'>No date</a></h3>"
                     "<p>Text.</p></article>\n" + article("Bad", date="31 Foo 2025"))
    page = read_listing_html(body, base_url=PAGE_URL)
    assert [item.title for item in page.items] == ["Good"]
    assert page.warnings == [
        "line 3: item 'No date' has no publishing date; left out",
        "line 4: invalid publishing date '31 Foo 2025'; write it as 'D Month YYYY', "
        "e.g. '9 October 2025'; item 'Bad'; left out",
    ]


def test_an_html_date_without_a_title_of_its_own_is_a_warning_not_an_item():
    body = html_page(article("Good") + "\n<div class='row'><p>Publishing date: 2 October 2025"
                     "</p><p>Orphan text.</p></div>")
    page = read_listing_html(body, base_url=PAGE_URL)
    assert [item.title for item in page.items] == ["Good"]
    assert page.warnings == ["line 2: a publishing date with no title of its own; left out"]


def test_an_html_page_cut_inside_a_field_leaves_that_field_out():
    whole = HTML_PAGE_2.read_text(encoding="utf-8")
    cut_at = whole.index('hreflang="en">Press release') + len('hreflang="en">P')
    page = read_listing_html(whole[:cut_at].encode(), base_url=PAGE_URL)
    first, cut = page.items
    assert first.content_type == "News"
    assert cut.title.startswith("Moldova") and cut.content_type is None
    assert page.warnings == [
        "line 63: the page ends inside the 'content type' field ('P'); that field of item "
        "'Moldova’s election officials trained on accessible polling stations' is left out"
    ]


def test_an_html_page_cut_inside_a_date_leaves_that_item_out():
    whole = HTML_PAGE_2.read_text(encoding="utf-8")
    cut_at = whole.index(">8 September 2025") + len(">8 September 20")
    page = read_listing_html(whole[:cut_at].encode(), base_url=PAGE_URL)
    assert len(page.items) == 1
    assert page.warnings[0].startswith("line 59: the page ends inside the publishing date "
                                       "'8 September 20'; item 'Moldova")


def test_the_page_charset_comes_from_http_then_its_meta_and_bad_bytes_are_refused():
    cyrillic = html_page(article("Новости")).replace(b"<head>", b"<head><meta charset='windows-1251'>")
    encoded = cyrillic.decode().encode("windows-1251")
    assert read_listing_html(encoded).items[0].title == "Новости"
    assert read_listing_html(html_page(article("Новости")).decode().encode("koi8-r"),
                             content_type="text/html; charset=koi8-r").items[0].title == "Новости"
    with pytest.raises(IngestError, match="not UTF-8 text .* byte offset"):
        read_listing_html(html_page(article("Caf\xe9")).decode().encode("latin-1"))


@pytest.mark.parametrize(("content_type", "body"), [
    ("text/html", HTML_PAGE.read_bytes()),
    (None, HTML_PAGE.read_bytes()),
    ("text/plain; charset=utf-8", SEED_LISTING.read_bytes()),
    (None, SEED_LISTING.read_bytes()),
])
def test_either_form_is_told_by_its_content_type_or_its_first_bytes(content_type, body):
    page = read_listing_document(body, content_type=content_type, base_url=PAGE_URL)
    assert len(page.items) == 7
    assert all(item.url for item in page.items) == (b"<html" in body)


# --- the text form, read defensively --------------------------------------------------------


def test_a_text_page_cut_inside_its_last_date_keeps_every_good_item():
    page = read_listing_text((DAMAGED / "cut-date.txt").read_text(encoding="utf-8"))
    assert len(page.items) == 3
    assert page.warnings == [
        "line 20: the page ends inside the publishing date '12 October 200'; item "
        "'OSCE Mission Donates Defibrillators to Kosovo Police to Improve Emergency Respon' "
        "left out"
    ]


def test_a_trailing_title_without_its_date_is_left_out_not_added_to_the_summary_before():
    page = read_listing_text((DAMAGED / "trailing-title.txt").read_text(encoding="utf-8"))
    complete = read_listing_text(SEED_LISTING.read_text(encoding="utf-8")).items[:3]
    assert page.items == complete
    assert page.warnings == [
        "line 19: item 'OSCE Mission Donates Defibrillators to Kosovo Police to Improve "
        "Emergency Respon' has no publishing date (the page ends after its title); left out"
    ]


def test_a_page_whose_summaries_span_lines_keeps_its_last_lines_as_summary():
    text = ("A\nPublishing date: 1 October 2025\nOne.\nTwo.\n"
            "B\nPublishing date: 2 October 2025\nThree.\nFour.\n")
    page = read_listing_text(text)
    assert [item.summary for item in page.items] == ["One. Two.", "Three. Four."]
    assert page.warnings == []


def test_a_cut_field_line_is_left_out_and_the_item_kept_without_it():
    page = read_listing_text((DAMAGED / "cut-field.txt").read_text(encoding="utf-8"))
    statement = page.items[-1]
    assert statement.title.startswith("Statement by the Chairpersonship")
    assert statement.content_type is None  # never a content type "P"
    assert statement.locations == ["OSCE Chairpersonship"]
    assert page.warnings == [
        "line 22: the page ends inside the 'content type' line ('P'); that field of item "
        "'Statement by the Chairpersonship on the anniversary of the Helsinki Final Act' is "
        "left out"
    ]


def test_a_text_item_whose_title_is_only_markup_is_left_out():
    page = read_listing_text("<script>alert(1)</script>\nPublishing date: 1 October 2025\n"
                             "Good\nPublishing date: 2 October 2025\nText.\n")
    assert [item.title for item in page.items] == ["Good"]
    assert page.warnings == ["line 1: the title is empty once its markup is removed; item "
                             "'<script>alert(1)</script>' left out"]


def test_a_field_line_ended_by_a_line_break_is_trusted():
    page = read_listing_text("A\nPublishing date: 1 October 2025\nContent type: News\n")
    assert page.items[0].content_type == "News" and page.warnings == []


def test_a_page_cut_inside_a_label_drops_the_cut_words():
    page = read_listing_text("A\nPublishing date: 1 October 2025\nSummary.\nB\nPublishing da")
    assert [item.title for item in page.items] == ["A"]
    assert page.items[0].summary == "Summary."
    assert page.warnings == [
        "line 5: the page ends inside a field label ('Publishing da'); left out",
        "line 4: item 'B' has no publishing date (the page ends inside its date label); "
        "left out",
    ]


def test_the_same_item_twice_is_read_twice_for_the_store_to_keep_the_complete_copy():
    page = read_listing_text((DAMAGED / "repeated-cut.txt").read_text(encoding="utf-8"))
    first, *_, again = page.items
    assert first.guid == again.guid
    assert is_less_complete(again, first) and not is_less_complete(first, again)


# --- completeness ---------------------------------------------------------------------------


FULL = ItemIn(guid="g", url="https://newsroom.example.org/a", title="Title",
              summary="A whole summary.", published_at=datetime(2025, 10, 1, tzinfo=UTC),
              content_type="News", themes=["Youth"], locations=["ODIHR"], language="en")


@pytest.mark.parametrize("change", [
    {"url": None}, {"published_at": None}, {"content_type": None}, {"themes": []},
    {"locations": []}, {"language": None}, {"summary": ""}, {"summary": "A whole sum"},
    {"title": "Tit"},
])
def test_a_copy_lacking_a_field_or_with_a_cut_text_is_less_complete(change):
    assert is_less_complete(replace(FULL, **change), FULL)
    assert not is_less_complete(FULL, replace(FULL, **change))


@pytest.mark.parametrize("change", [
    {}, {"summary": "Another summary."}, {"summary": "A whole summary. And more."},
    {"themes": ["Elections"]}, {"content_type": "Press release"}, {"title": "New title"},
    {"summary": "A  whole\nsummary."},
])
def test_an_edit_or_an_equal_copy_is_as_complete(change):
    assert not is_less_complete(replace(FULL, **change), FULL)
