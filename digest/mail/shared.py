"""Render per distinct content: what readers of the same items share, rendered once.

Readers whose messages carry the same items in the same template, grouped and dated alike
(grouping, time zone, chosen themes and places: everything the body reads of them besides
their links and address) get the same subject and the same HTML and text apart from their
personal parts: the address in the footer's reason line and the manage, unsubscribe,
view-in-browser and feed links. Such a content is rendered once, for a stand-in reader whose
personal values are markers (letters and digits, so escaping leaves them alone), and kept in
a small per-process LRU (``SharedContents``). Each part is then cut where its first personal
part begins (the start of that line in HTML, of that paragraph in text): the part before the
cut (the masthead, the summary, every item block) is shared, as a ``Fragment`` whose
quoted-printable bytes are computed once; the part after it (the footer and the closing
markup, ~1.4 KB of HTML) is filled in per reader. Quoted-printable starts afresh after every
line break, so encoding the two pieces apart gives the bytes of encoding the whole (the rule
``mime._quoted_printable`` already relies on), and every message of a content uses the same
MIME boundary so its encoded start is the same bytes for the DKIM signer too (ADR 0028).

Filling in is a replacement of each marker by the reader's value, escaped as Jinja escapes
it in HTML; the text part's reason line is wrapped to the reader's address, so the wrapped
prose of the text tail that holds the address is unwrapped and wrapped again (``wrap_text``,
as the template's ``|wrap`` does). The first content of each family (template, renderer,
which links the reader has) is checked: its first real reader and two probes (the shortest
and a long address) are also rendered the plain way and compared with the filled-in result.
A family whose personal parts do not fill in exactly (a marker in the subject or before the
cut, a value the text part wraps differently) is never shared: each of its readers is
rendered whole. So is a reader whose address or a link holds whitespace (which wrapping or
tidying could move).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from markupsafe import escape

from digest.logs import get_logger
from digest.mail.mime import _quoted_printable, new_boundary
from digest.render import Recipient, RenderedEmail
from digest.render.fragments import Fragment
from digest.render.text import wrap_text

__all__ = ["CONTENT_CACHE_SIZE", "SharedContent", "SharedContents", "content_key",
           "shared_contents"]

log = get_logger(__name__)

# Distinct contents a process keeps. A weekly run has one content per combination of item
# set, grouping, time zone and choices among a batch's readers: a few dozen at most. Each
# entry is ~100 KB (the HTML and text, their encodings, the stand-in's tail).
CONTENT_CACHE_SIZE = 48

# The personal fields of a recipient, in the order their markers are replaced.
PERSONAL = ("email", "manage_url", "unsubscribe_url", "view_url", "feed_url")
# One marker prefix per process: letters and digits only (HTML escaping, quoted-printable
# and wrapping leave it whole), ending in "qz" so no marker is the start of another.
_PREFIX = "zq" + secrets.token_hex(8)
MARKS = {name: f"{_PREFIX}{name.replace('_', '')}qz" for name in PERSONAL}


def content_key(template: str, renderer: object, recipient: Recipient,
                items: Sequence[Hashable]) -> tuple[Hashable, Hashable]:
    """(content, family). The content is what a body depends on besides the personal parts:
    the template (and the renderer, so settings and templates count), the items (values, in
    order), the reader's grouping, time zone and choices, and which personal links the
    reader has at all (a missing link drops its line). The family is the part of it that
    decides where the personal parts sit: the template, the renderer and those links."""
    family = (template, id(renderer),
              tuple(bool(getattr(recipient, name)) for name in PERSONAL))
    return (family, tuple(items), recipient.group_by, recipient.timezone, recipient.themes,
            recipient.locations), family


def stand_in(recipient: Recipient) -> Recipient:
    """The recipient with a marker for every personal value it has."""
    marks: dict[str, Any] = {
        name: MARKS[name] for name in PERSONAL if getattr(recipient, name)}
    return replace(recipient, subscriber_id=0, **marks)


@dataclass
class SharedContent:
    """One content's shared parts and the tails its readers' parts are filled into."""

    renderer: object
    subject: str
    html_prefix: Fragment
    html_tail: str
    text_prefix: Fragment
    text_tail: tuple[tuple[bool, str], ...]
    boundary: str
    shareable: bool = True

    @classmethod
    def of(cls, renderer: object, rendered: RenderedEmail) -> SharedContent:
        """Cut a stand-in's rendering into its shared start and personal tail."""
        html_cut = _line_start(rendered.html)
        text_cut = _paragraph_start(rendered.text)
        shareable = (_PREFIX not in rendered.subject
                     and _PREFIX not in rendered.html[:html_cut]
                     and _PREFIX not in rendered.text[:text_cut]
                     and "\r" not in rendered.html and "\r" not in rendered.text)
        html_prefix, text_prefix = (Fragment(rendered.html[:html_cut]),
                                    Fragment(rendered.text[:text_cut]))
        # Encoded once here, from the item blocks' kept encodings (the same bytes).
        for prefix, blocks in ((html_prefix, rendered.html_fragments),
                               (text_prefix, rendered.text_fragments)):
            if prefix.text.endswith("\n") and "\r" not in prefix.text:
                prefix.encoded[0] = _quoted_printable(prefix.text, blocks)
        return cls(renderer=renderer, subject=rendered.subject,
                   html_prefix=html_prefix,
                   html_tail=rendered.html[html_cut:],
                   text_prefix=text_prefix,
                   text_tail=_text_pieces(rendered.text[text_cut:]), boundary=new_boundary(),
                   shareable=shareable)

    def fill(self, recipient: Recipient) -> RenderedEmail | None:
        """The reader's email from the shared parts; None if this reader cannot be filled
        in exactly (render them whole)."""
        values = {name: getattr(recipient, name) or "" for name in PERSONAL}
        # str.split() splits at exactly the characters str.isspace() accepts: one C call.
        if not self.shareable or any(
                value and (not value.isprintable() or value.split() != [value])
                for value in values.values()):
            return None
        html = self.html_tail
        for name, value in values.items():
            if value:
                html = html.replace(MARKS[name], str(escape(value)))
        return RenderedEmail(
            subject=self.subject, html=self.html_prefix.text + html,
            text=self.text_prefix.text + _fill_text(self.text_tail, values),
            html_fragments=(self.html_prefix,), text_fragments=(self.text_prefix,),
            boundary=self.boundary)


def _text_pieces(tail: str) -> tuple[tuple[bool, str], ...]:
    """The text tail as pieces to fill in: (False, text) is filled in as it is; (True,
    prose) is a block of wrapped lines holding the address, kept unwrapped, filled in and
    wrapped again (``wrap_text``, the template's ``|wrap``). Such a block is found as the
    longest run of lines ending a paragraph, holding the address, that wrapping gives back
    unchanged: greedy wrapping breaks the lines before the address's line alike whatever
    its length, so the run may start above the wrapped prose without changing the result."""
    mark = MARKS["email"]
    pieces: list[tuple[bool, str]] = []
    for index, paragraph in enumerate(tail.split("\n\n")):
        if index:
            pieces.append((False, "\n\n"))
        body = paragraph.rstrip("\n")
        end = paragraph[len(body):]
        lines = body.split("\n")
        found = None
        for k in range(len(lines)):
            joined = " ".join(lines[k:])
            if mark not in joined:
                break
            if wrap_text(joined) == "\n".join(lines[k:]):
                found = k
                break
        if found is None:  # no address, or not in wrapped prose: replaced in place
            pieces.append((False, body))
        else:
            pieces.append((False, "".join(line + "\n" for line in lines[:found])))
            pieces.append((True, " ".join(lines[found:])))
        pieces.append((False, end))
    merged: list[tuple[bool, str]] = []
    for wrapped, text in pieces:
        if merged and not wrapped and not merged[-1][0]:
            merged[-1] = (False, merged[-1][1] + text)
        elif text or wrapped:
            merged.append((wrapped, text))
    return tuple(merged)


def _fill_text(pieces: tuple[tuple[bool, str], ...], values: dict[str, str]) -> str:
    def put(text: str) -> str:
        for name, value in values.items():
            if value and MARKS[name] in text:
                text = text.replace(MARKS[name], value)
        return text

    return "".join(wrap_text(put(text)) if wrapped else put(text) for wrapped, text in pieces)


def _line_start(body: str) -> int:
    """Where the line holding the first marker starts (the end if there is none)."""
    at = body.find(_PREFIX)
    if at < 0:
        return body.rfind("\n") + 1
    return body.rfind("\n", 0, at) + 1


def _paragraph_start(body: str) -> int:
    """Where the paragraph holding the first marker starts (after a blank line)."""
    at = body.find(_PREFIX)
    if at < 0:
        return body.rfind("\n") + 1
    found = body.rfind("\n\n", 0, at)
    return 0 if found < 0 else found + 2


def _probes(recipient: Recipient) -> tuple[Recipient, ...]:
    """Readers with the shortest and a long address: where the text part's wrapping of the
    address changes, these find out at once (the first reader may not)."""
    domain = recipient.email.rpartition("@")[2] or "example.org"
    return tuple(replace(recipient, email=f"{local}@{domain}") for local in ("p", "p" * 64))


class SharedContents:
    """The per-process LRU of contents, at most ``maxsize``; safe to share between threads.
    ``hits`` and ``misses`` count look-ups (the benchmark and the tests read them)."""

    def __init__(self, maxsize: int = CONTENT_CACHE_SIZE):
        self.maxsize = maxsize
        self._contents: OrderedDict[Hashable, SharedContent] = OrderedDict()
        # Families whose filling in was checked: whether it held.
        self._families: dict[Hashable, bool] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._contents)

    def clear(self, *, families: bool = True) -> None:
        """Forget every content and the counts (and which families were checked)."""
        with self._lock:
            self._contents.clear()
            if families:
                self._families.clear()
            self.hits = self.misses = 0

    def render(self, key: Hashable, renderer: object, recipient: Recipient,
               render: Callable[[Recipient], RenderedEmail],
               family: Hashable | None = None) -> RenderedEmail:
        """``recipient``'s email of the content ``key``, rendered by ``render`` (the plain
        path) once per content, for a stand-in, and filled in per reader.

        ``family``: what decides where the personal parts sit (the template, the renderer,
        which links the reader has). Filling in is checked against plain renderings (the
        first reader and two probes) for the first content of each family, and trusted for
        the family's later contents; without a family, for every content."""
        with self._lock:
            content = self._contents.get(key)
            if content is not None and content.renderer is renderer:
                self._contents.move_to_end(key)
                self.hits += 1
            else:
                content = None
                self.misses += 1
        if content is not None:
            filled = content.fill(recipient)
            return filled if filled is not None else render(recipient)
        checked = self._families.get(family) if family is not None else None
        if checked is False:
            return render(recipient)  # this family's personal parts never fill in
        content = SharedContent.of(renderer, render(stand_in(recipient)))
        plain = None
        if checked is None:
            if content.shareable:
                plain = render(recipient)
                if content.fill(recipient) != plain or any(
                        content.fill(probe) != render(probe) for probe in _probes(recipient)):
                    content.shareable = False
            if not content.shareable:
                # The template's personal parts do not fill in exactly: never shared.
                log.warning("email content not shareable: rendered per reader",
                            template=str(family[0]) if isinstance(family, tuple) else None)
            if family is not None:
                with self._lock:
                    while len(self._families) >= self.maxsize:
                        del self._families[next(iter(self._families))]
                    self._families[family] = content.shareable
        with self._lock:
            self._contents[key] = content
            self._contents.move_to_end(key)
            while len(self._contents) > self.maxsize:
                self._contents.popitem(last=False)
        filled = content.fill(recipient)
        if filled is not None:
            return filled
        return plain if plain is not None else render(recipient)


# The process's cache: composing in a worker, the web app and the CLI all go through it.
shared_contents = SharedContents()
