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

Blocks that are the same for many readers (an item in a time zone) are marked in the
templates with ``{% call fragment(key) %}`` and rendered once per renderer (``fragments.py``);
``EmailRenderer(..., fragments=False)`` renders every block every time, for comparison.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any, Literal, overload

import jinja2
from mjml import mjml2html

from digest.errors import TemplateError, ValidationError
from digest.render.dates import local_date, period_text, zone_info
from digest.render.fragments import USED, Fragment, FragmentCache, fragment_helper
from digest.render.items import (
    Group,
    ItemView,
    Recipient,
    RenderedEmail,
    RenderItem,
    group_key,
    item_view,
    newest_first,
)
from digest.render.text import safe_url, tidy_text, wrap_text
from digest.settings import Settings

GROUP_BY = ("theme", "location")
OTHER_GROUP = "Other news"
# MJML labels its outer div (role="article") with the mj-title: text outside every landmark
# (axe: region), and the subject twice for a screen reader, since <title> carries it already.
_WRAPPER_LABEL = re.compile(r'(<div[^>]*?) aria-label="[^"]*"(?=[^>]*aria-roledescription="email")')
# A digest with more groups than this opens with a table of contents (links to each group).
TOC_AFTER_GROUPS = 3


class EmailRenderer:
    """Loads ``templates/email/<name>/`` and compiles its MJML once; ``render`` per message."""

    # Templates that carry exactly one item (exposed to them as ``item``).
    SINGLE_ITEM = frozenset({"alert"})

    def __init__(self, name: str, settings: Settings, *, fragments: bool = True):
        self.name = name
        self.settings = settings
        # One cache per part: a block's HTML and its text are different outputs of one key.
        self.html_fragments = FragmentCache() if fragments else None
        self.text_fragments = FragmentCache() if fragments else None
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
        self._env.filters["wrap"] = wrap_text
        # Layout tags use other delimiters so the message tags pass through untouched.
        layout_env = jinja2.Environment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False,
            block_start_string="[%", block_end_string="%]",
            variable_start_string="[[", variable_end_string="]]",
            comment_start_string="[#", comment_end_string="#]",
        )
        self._html = self._compile(layout_env, f"{name}/body.mjml")
        self._html.globals["fragment"] = fragment_helper(self.html_fragments)
        self._text = self._load(f"{name}/body.txt")
        self._text.globals["fragment"] = fragment_helper(self.text_fragments)
        self._subject = self._load(f"{name}/subject.txt")
        self._preheader = self._load(f"{name}/preheader.txt", optional=True)
        self._reason = self._load(f"{name}/reason.txt", optional=True)

    @overload
    def _load(self, path: str, optional: Literal[False] = False) -> jinja2.Template: ...
    @overload
    def _load(self, path: str, optional: Literal[True]) -> jinja2.Template | None: ...

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
        html = _WRAPPER_LABEL.sub(r"\1", html, count=1)
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
        zone = zone_info(recipient.timezone)

        # Newest first, then the cap; groups keep that order inside.
        ordered = sorted(items, key=newest_first)
        cap = max(s.max_items_per_digest, 0)
        shown, hidden = ordered[:cap], len(ordered) - min(len(ordered), cap)
        picked = recipient.themes if recipient.group_by == "theme" else recipient.locations
        chosen = frozenset(v.casefold() for v in picked)
        keys = [group_key(it, recipient.group_by, chosen) for it in ordered]
        buckets: dict[str | None, list[ItemView]] = {}
        for item, key in zip(shown, keys, strict=False):  # keys cover the hidden ones too
            buckets.setdefault(key, []).append(item_view(item, recipient.timezone, s.newsroom_url))
        groups = [Group(k, v) for k, v in sorted(
            ((k, v) for k, v in buckets.items() if k is not None), key=lambda kv: kv[0].casefold()
        )]
        if None in buckets:
            groups.append(Group(OTHER_GROUP, buckets[None]))

        start, end = context.pop("period_start", None), context.pop("period_end", None)
        start = local_date(start, zone) if start is not None else None
        end = local_date(end, zone) if end is not None else None
        period, period_short = period_text(start, end), period_text(start, end, short=True)
        summary_line = self._summary_line(
            len(ordered), len({k for k in keys if k is not None}), recipient.group_by,
            bool(chosen), period,
        )
        views = [view for group in groups for view in group.items]
        values: dict[str, Any] = {
            "filters": (), "toc_after": TOC_AFTER_GROUPS, **context,
            "recipient": recipient,
            "newsroom_name": s.newsroom_name,
            "newsroom_url": s.newsroom_url,
            "items": views,
            "item": views[0] if views else None,
            "groups": groups,
            "total_count": len(ordered),
            "shown_count": len(shown),
            "more_count": hidden,
            "more_url": safe_url(context.get("more_url"), s.newsroom_url),
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
            html_used: list[Fragment] = []
            text_used: list[Fragment] = []
            html = self._html.render(values, **{USED: html_used})
            text = self._text.render(values, **{USED: text_used})
        except jinja2.UndefinedError as e:
            raise TemplateError(
                f"email template {self.name!r} needs a value it was not given ({e.message}); "
                "pass it to render(...)"
            ) from None
        if not subject:
            raise TemplateError(f"{self.name}/subject.txt rendered an empty subject")
        return RenderedEmail(subject=subject, html=html, text=tidy_text(text),
                             html_fragments=tuple(html_used), text_fragments=tuple(text_used))

    @staticmethod
    def _summary_line(total: int, groups: int, group_by: str, chosen: bool, period: str) -> str:
        """'12 new items in 3 of your themes, 2–9 October 2025'."""
        line = f"{total} new {'item' if total == 1 else 'items'}"
        if groups:
            noun = group_by if groups == 1 and not chosen else f"{group_by}s"
            line += f" in {groups}{' of your' if chosen else ''} {noun}"
        return f"{line}, {period}" if period else line


_renderers: dict[tuple[str, str, int, bool], EmailRenderer] = {}
_renderers_lock = threading.Lock()


def get_renderer(name: str, settings: Settings, *, fragments: bool = True) -> EmailRenderer:
    """The renderer for ``name``, built (and its MJML compiled) once per process and settings;
    it keeps its rendered fragments as long (bounded, see fragments.py)."""
    key = (name, str(settings.templates_dir), id(settings), fragments)
    renderer = _renderers.get(key)
    # The renderer holds its settings, so an id in the key cannot be reused while cached.
    if renderer is None or renderer.settings is not settings:
        with _renderers_lock:
            renderer = _renderers.get(key)
            if renderer is None or renderer.settings is not settings:
                if len(_renderers) >= 32:
                    _renderers.clear()
                renderer = _renderers[key] = EmailRenderer(name, settings, fragments=fragments)
    return renderer
