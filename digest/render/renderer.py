"""Render stage: one email (subject, HTML, text) per recipient from the shared templates.

Compile once, Jinja per message. ``templates/email/<name>/body.mjml`` is assembled from the
shared layout and partials (layout tags ``[% %]``), compiled by MJML to HTML once when the
renderer is built, and that HTML, with the message tags ``{{ }}``/``{% %}`` that went
through MJML untouched, is then a Jinja template rendered per message with autoescaping on.
Data therefore never passes through the MJML parser: a title like ``</mj-text>`` cannot
break the layout. The text part, subject, preheader and footer reason are ``.txt`` Jinja
templates with autoescaping off. See ``templates/email/README.md`` for the template rules.

The subject is rendered, stripped, and every whitespace run in it (newlines from the
template or CR/LF from data alike) collapsed to one space, so no line break can reach the
Subject header.
"""

from __future__ import annotations

import re
import textwrap
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from html import unescape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import nh3
from mjml import mjml2html

from digest.errors import TemplateError, ValidationError
from digest.settings import Settings, get_settings

if TYPE_CHECKING:
    from digest import models

__all__ = [
    "EmailRenderer",
    "Recipient",
    "RenderItem",
    "RenderedEmail",
    "get_renderer",
    "render_items_from_models",
]

GROUP_BY = ("theme", "location")
SUMMARY_LIMIT = 300  # characters of an item's summary shown in an email
TEXT_WIDTH = 72
OTHER_GROUP = "Other news"
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


@dataclass(frozen=True)
class RenderItem:
    id: int
    title: str
    url: str | None
    summary: str
    published_at: datetime | None
    content_type: str | None
    themes: tuple[str, ...]
    locations: tuple[str, ...]


@dataclass(frozen=True)
class Recipient:
    subscriber_id: int
    email: str
    group_by: str = "theme"  # or "location"
    manage_url: str = ""
    unsubscribe_url: str = ""
    view_url: str | None = None
    timezone: str = "UTC"
    # The themes/locations the subscriber chose (names, any filter). Optional: they decide
    # which group an item with several themes goes under, and the "of your themes" wording.
    themes: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class _ItemView:
    """An item as templates see it: links checked, dates local, text cut and wrapped."""

    id: int
    title: str
    url: str
    date_text: str
    content_type: str
    themes: tuple[str, ...]
    locations: tuple[str, ...]
    summary: str
    meta_line: str  # date · type · locations
    labels_line: str  # themes
    # Pre-wrapped for the text part (wrapping is the costly part; items repeat across people).
    title_text: str
    meta_text: str
    summary_text: str
    labels_text: str


@dataclass(frozen=True)
class _Group:
    name: str
    items: list[_ItemView]


def _wrap(text: str, width: int = TEXT_WIDTH, indent: str = "",
          subsequent: str | None = None) -> str:
    # URLs and long words stay whole: a broken link is worse than a long line.
    return textwrap.fill(
        str(text), width=width, initial_indent=indent,
        subsequent_indent=indent if subsequent is None else subsequent,
        break_long_words=False, break_on_hyphens=False,
    )


def _plain(text: str) -> str:
    """Summaries may carry (sanitised) HTML from feeds: keep the words, drop the tags."""
    if "<" in text or "&" in text:
        text = unescape(nh3.clean(text, tags=set()))
    return " ".join(text.split())


def _truncate(text: str, limit: int = SUMMARY_LIMIT) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(None, 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut.rstrip(" ,;:.-\u2013\u2014") + "\u2026"


def _safe_url(url: str | None, fallback: str) -> str:
    # Only web links: a feed's "javascript:" or relative URL becomes the newsroom link.
    if url and urlsplit(url.strip()).scheme in ("http", "https"):
        return url.strip()
    return fallback


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Vienna' or 'UTC'"
        ) from None


def _day(d: date) -> str:
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def _local_date(value: date | datetime, zone: ZoneInfo) -> date:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return aware.astimezone(zone).date()
    return value


def _period(start: date | None, end: date | None, short: bool = False) -> str:
    """'2–9 October 2025', '28 September – 5 October 2025'; short months for subjects."""
    if start is None and end is None:
        return ""
    start, end = start or end, end or start
    if start > end:
        raise ValidationError(f"period_start {start} is after period_end {end}; swap them")

    def month(d: date) -> str:
        return _MONTHS[d.month - 1][:3] if short else _MONTHS[d.month - 1]

    if start == end:
        return f"{end.day} {month(end)} {end.year}"
    if (start.year, start.month) == (end.year, end.month):
        return f"{start.day}\u2013{end.day} {month(end)} {end.year}"
    if start.year == end.year:
        return f"{start.day} {month(start)} \u2013 {end.day} {month(end)} {end.year}"
    return f"{start.day} {month(start)} {start.year} \u2013 {end.day} {month(end)} {end.year}"


@lru_cache(maxsize=8192)
def _item_view(item: RenderItem, zone_name: str, fallback_url: str) -> _ItemView:
    # Cached: in a run the same items go to many subscribers in few time zones.
    title = " ".join(item.title.split())
    date_text = ""
    if item.published_at is not None:
        date_text = _day(_local_date(item.published_at, ZoneInfo(zone_name)))
    content_type = item.content_type or ""
    parts = (date_text, content_type, ", ".join(item.locations))
    meta_line = " \u00b7 ".join(p for p in parts if p)
    labels_line = ", ".join(item.themes)
    summary = _truncate(_plain(item.summary or ""))
    return _ItemView(
        id=item.id, title=title, url=_safe_url(item.url, fallback_url), date_text=date_text,
        content_type=content_type, themes=item.themes, locations=item.locations,
        summary=summary, meta_line=meta_line, labels_line=labels_line,
        title_text=_wrap(title), meta_text=_wrap(meta_line),
        summary_text=_wrap(summary),
        labels_text=_wrap(f"Themes: {labels_line}") if labels_line else "",
    )


def _group_key(item: RenderItem, group_by: str, chosen: frozenset[str]) -> str | None:
    labels = item.themes if group_by == "theme" else item.locations
    # An item with several themes (or locations) is listed once, under the first of its
    # labels the reader chose, else under its first label, so nobody reads it twice.
    for label in labels:
        if label.casefold() in chosen:
            return label
    return labels[0] if labels else None


def _newest_first(item: RenderItem) -> tuple[bool, float]:
    return (item.published_at is None, -(item.published_at.timestamp() if item.published_at else 0))


class EmailRenderer:
    """Loads ``templates/email/<name>/`` and compiles its MJML once; ``render`` per message."""

    # Templates that carry exactly one item (exposed to them as ``item``).
    SINGLE_ITEM = frozenset({"alert"})

    def __init__(self, name: str = "digest", settings: Settings | None = None):
        self.name = name
        self.settings = settings or get_settings()
        email_dir = self.settings.templates_dir / "email"
        if not (email_dir / name / "body.mjml").is_file():
            raise TemplateError(
                f"email template {name!r} not found: expected {name}/body.mjml, body.txt and "
                f"subject.txt under {email_dir}; check DIGEST_TEMPLATES_DIR"
            )
        loader = jinja2.FileSystemLoader(str(email_dir))
        # Message tags: autoescape on for HTML/MJML and for the compiled HTML string
        # (a template from a string has no name), off for .txt.
        self._env = jinja2.Environment(
            loader=loader,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html", "htm", "xml", "mjml"), disabled_extensions=("txt",),
                default_for_string=True, default=True,
            ),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            auto_reload=False,
        )
        self._env.filters["wrap"] = _wrap
        # Layout tags use other delimiters so the message tags pass through untouched.
        layout_env = jinja2.Environment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False,
            block_start_string="[%", block_end_string="%]",
            variable_start_string="[[", variable_end_string="]]",
            comment_start_string="[#", comment_end_string="#]",
        )
        self._html = self._compile(layout_env, f"{name}/body.mjml")
        self._text = self._load(f"{name}/body.txt")
        self._subject = self._load(f"{name}/subject.txt")
        self._preheader = self._load(f"{name}/preheader.txt", optional=True)
        self._reason = self._load(f"{name}/reason.txt", optional=True)

    def _load(self, path: str, optional: bool = False) -> jinja2.Template | None:
        try:
            return self._env.get_template(path)
        except jinja2.TemplateNotFound:
            if optional:
                return None
            raise TemplateError(f"email template file {path} is missing; create it") from None
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"{path}, line {e.lineno}: Jinja syntax error: {e.message}"
            ) from None

    def _compile(self, layout_env: jinja2.Environment, path: str) -> jinja2.Template:
        try:
            source = layout_env.get_template(path).render()
        except jinja2.TemplateNotFound as e:
            raise TemplateError(
                f"{path} includes or extends {e.name}, which does not exist"
            ) from None
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"{e.name or path}, line {e.lineno}: layout tag error: {e.message}"
            ) from None
        except jinja2.UndefinedError as e:
            raise TemplateError(
                f"{path}: layout tags can only use values set in the layout ({e.message}); "
                "per-message values go in {{ }}"
            ) from None
        try:
            html = mjml2html(source)
        except ValueError as e:
            raise TemplateError(
                f"{path} is not valid MJML ({e}). Look for a bare '<' in mj-text (write &lt;, "
                "or 'b > a' in a Jinja test), an unclosed or misspelt tag, or Jinja block tags "
                "between MJML elements that are not inside <mj-raw>"
            ) from None
        try:
            return self._env.from_string(html)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"{path}: the HTML compiled from it is not a valid Jinja template ({e.message}, "
                f"line {e.lineno}); CSS written as '{{#' or '{{{{' starts a Jinja tag: add a space"
            ) from None

    def render(
        self, recipient: Recipient, items: Sequence[RenderItem] = (), **context: Any
    ) -> RenderedEmail:
        """One email. ``items`` are the recipient's matching items, in any order.

        Digest context (optional): ``period_start``/``period_end`` (dates or datetimes),
        ``more_url`` (where "and K more" links; default the newsroom). Confirmation:
        ``confirm_url``, ``filters`` (strings). Anything else is passed to the templates.
        """
        s = self.settings
        if recipient.group_by not in GROUP_BY:
            raise ValidationError(
                f"group_by must be 'theme' or 'location', not {recipient.group_by!r}"
            )
        if self.name in self.SINGLE_ITEM and len(items) != 1:
            raise ValidationError(
                f"the {self.name} email carries exactly one item, got {len(items)}"
            )
        zone = _zone(recipient.timezone)

        # Newest first, then the cap; groups keep that order inside.
        ordered = sorted(items, key=_newest_first)
        cap = max(s.max_items_per_digest, 0)
        shown, hidden = ordered[:cap], len(ordered) - min(len(ordered), cap)
        picked = recipient.themes if recipient.group_by == "theme" else recipient.locations
        chosen = frozenset(v.casefold() for v in picked)
        keys = [_group_key(it, recipient.group_by, chosen) for it in ordered]
        buckets: dict[str | None, list[_ItemView]] = {}
        for item, key in zip(shown, keys):
            buckets.setdefault(key, []).append(_item_view(item, recipient.timezone, s.newsroom_url))
        groups = [_Group(k, v) for k, v in sorted(
            ((k, v) for k, v in buckets.items() if k is not None), key=lambda kv: kv[0].casefold()
        )]
        if None in buckets:
            groups.append(_Group(OTHER_GROUP, buckets[None]))

        start, end = context.pop("period_start", None), context.pop("period_end", None)
        start = _local_date(start, zone) if start is not None else None
        end = _local_date(end, zone) if end is not None else None
        period, period_short = _period(start, end), _period(start, end, short=True)
        summary_line = self._summary_line(
            len(ordered), len({k for k in keys if k is not None}), recipient.group_by,
            bool(chosen), period,
        )
        views = [view for group in groups for view in group.items]
        values: dict[str, Any] = {
            "filters": (), **context,
            "recipient": recipient,
            "newsroom_name": s.newsroom_name,
            "newsroom_url": s.newsroom_url,
            "items": views,
            "item": views[0] if views else None,
            "groups": groups,
            "total_count": len(ordered),
            "shown_count": len(shown),
            "more_count": hidden,
            "more_url": _safe_url(context.get("more_url"), s.newsroom_url),
            "period": period,
            "period_short": period_short,
            "summary_line": summary_line,
        }
        try:
            subject = " ".join(self._subject.render(values).split())
            values["subject"] = subject
            values["preheader"] = (
                " ".join(self._preheader.render(values).split()) if self._preheader else subject
            )
            values["reason"] = " ".join(self._reason.render(values).split()) if self._reason else ""
            html = self._html.render(values)
            text = self._text.render(values)
        except jinja2.UndefinedError as e:
            raise TemplateError(
                f"email template {self.name!r} needs a value it was not given ({e.message}); "
                "pass it to render(...)"
            ) from None
        if not subject:
            raise TemplateError(f"{self.name}/subject.txt rendered an empty subject")
        return RenderedEmail(subject=subject, html=html, text=_tidy_text(text))

    @staticmethod
    def _summary_line(total: int, groups: int, group_by: str, chosen: bool, period: str) -> str:
        """'12 new items in 3 of your themes, 2–9 October 2025'."""
        line = f"{total} new {'item' if total == 1 else 'items'}"
        if groups:
            noun = group_by if groups == 1 and not chosen else f"{group_by}s"
            line += f" in {groups}{' of your' if chosen else ''} {noun}"
        return f"{line}, {period}" if period else line


_BLANK_RUNS = re.compile(r"\n{3,}")


def _tidy_text(text: str) -> str:
    # Templates stay readable; the mail gets at most one blank line in a row.
    return _BLANK_RUNS.sub("\n\n", text).strip() + "\n"


_renderers: dict[tuple[str, str, int], EmailRenderer] = {}
_renderers_lock = threading.Lock()


def get_renderer(name: str = "digest", settings: Settings | None = None) -> EmailRenderer:
    """The renderer for ``name``, built (and its MJML compiled) once per process and settings."""
    settings = settings or get_settings()
    key = (name, str(settings.templates_dir), id(settings))
    renderer = _renderers.get(key)
    # The renderer holds its settings, so an id in the key cannot be reused while cached.
    if renderer is None or renderer.settings is not settings:
        with _renderers_lock:
            renderer = _renderers.get(key)
            if renderer is None or renderer.settings is not settings:
                if len(_renderers) >= 32:
                    _renderers.clear()
                renderer = _renderers[key] = EmailRenderer(name, settings)
    return renderer


def render_items_from_models(items: Iterable[models.Item]) -> list[RenderItem]:
    """Plain, hashable snapshots of ORM items (load themes, locations, content_type first)."""
    return [
        RenderItem(
            id=item.id,
            title=item.title,
            url=item.url,
            summary=item.summary or "",
            published_at=item.published_at,
            content_type=item.content_type.name if item.content_type is not None else None,
            themes=tuple(t.name for t in item.themes),
            locations=tuple(loc.name for loc in item.locations),
        )
        for item in items
    ]
