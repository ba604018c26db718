"""Text helpers of the render stage: wrapping for the text part, plain text from a summary,
cutting, web-only links, blank-line tidying."""

from __future__ import annotations

import textwrap
from functools import lru_cache
from html import unescape
from urllib.parse import urlsplit

import nh3

SUMMARY_LIMIT = 300  # characters of an item's summary shown in an email
TEXT_WIDTH = 72


_WRAP_WHITESPACE = frozenset("\t\n\x0b\x0c\r")  # what textwrap turns into spaces


@lru_cache(maxsize=1024)  # the footer's lines are the same in every message
def wrap_text(text: str, width: int = TEXT_WIDTH, indent: str = "",
              subsequent: str | None = None) -> str:
    text = str(text)
    # A line that already fits comes back unchanged, without textwrap's regex work.
    if (not indent and len(text) <= width and text == text.strip()
            and _WRAP_WHITESPACE.isdisjoint(text)):
        return text
    # URLs and long words stay whole: a broken link is worse than a long line.
    return textwrap.fill(
        str(text), width=width, initial_indent=indent,
        subsequent_indent=indent if subsequent is None else subsequent,
        break_long_words=False, break_on_hyphens=False,
    )


def plain_text(text: str) -> str:
    """Summaries may carry (sanitised) HTML from feeds: keep the words, drop the tags."""
    if "<" in text or "&" in text:
        text = unescape(nh3.clean(text, tags=set()))
    return " ".join(text.split())


def truncate(text: str, limit: int = SUMMARY_LIMIT) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(None, 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut.rstrip(" ,;:.-\u2013\u2014") + "\u2026"


def safe_url(url: str | None, fallback: str) -> str:
    # Only web links: a feed's "javascript:" or relative URL becomes the newsroom link.
    if url and urlsplit(url.strip()).scheme in ("http", "https"):
        return url.strip()
    return fallback


def tidy_text(text: str) -> str:
    # Templates stay readable; the mail gets at most one blank line in a row. str.replace
    # finds the runs much faster than the regex scans 10 KB (each pass shortens every run
    # of n >= 3 by n // 3, so passes are few), with the same result.
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
