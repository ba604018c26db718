"""Fragments: the parts of an email that are the same for many readers, rendered once.

A template marks such a part with a call block keyed by everything the part depends on::

    {% call fragment(item) %} ... {% endcall %}

The block is rendered the first time its key is seen; later messages with an equal key get
the same output without running the block again. The key must therefore cover everything
the block reads: an item's view (``ItemView``: the item snapshot as seen in one time zone)
does, and a block keyed by it may not use the reader, the group or the loop. The output is
what the block gives, escaped as usual when it was rendered (the HTML part has autoescaping
on), so caching changes no byte of a message.

Each renderer holds one bounded cache per part (HTML, text), so the cache lives as long as
the process's renderer: a worker's batches of one run share the week's items. The mail stage
reuses a fragment's transfer encoding too (``Fragment.encoded``), which is why the renderer
reports the fragments a message used, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import jinja2
from markupsafe import Markup

# Entries per part. A weekly run shows ~200 items in a few time zones; an item's HTML is
# ~1.6 KB and its encoded form as much again, so a full HTML cache is ~7 MB.
FRAGMENT_CACHE_SIZE = 2048
# The per-render list of the fragments used, passed to the template under this name.
USED = "_fragments_used"


class Fragment:
    """One rendered block and, filled in by the mail stage on first use, its encodings."""

    __slots__ = ("encoded", "text")

    def __init__(self, text: str):
        self.text = text  # a plain str, also for HTML (already escaped then)
        # Quoted-printable of text[start:] by start, kept by digest.mail.mime.
        self.encoded: dict[int, bytes] = {}


class FragmentCache:
    """Rendered blocks by key, at most ``maxsize``; the oldest goes first when full (a run's
    items arrive together and age out together). Safe to share between threads."""

    def __init__(self, maxsize: int = FRAGMENT_CACHE_SIZE):
        self.maxsize = maxsize
        self._fragments: dict[Hashable, Fragment] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._fragments)

    def get(self, key: Hashable, render: Callable[[], str]) -> Fragment:
        fragment = self._fragments.get(key)
        if fragment is None:
            fragment = Fragment(str(render()))
            with self._lock:
                while len(self._fragments) >= self.maxsize > 0:
                    del self._fragments[next(iter(self._fragments))]
                if self.maxsize > 0:
                    self._fragments[key] = fragment
        return fragment


def fragment_helper(cache: FragmentCache | None) -> Callable[..., str]:
    """The template global ``fragment``; with no cache it renders the block every time."""

    @jinja2.pass_context
    def fragment(context: jinja2.runtime.Context, *key: Hashable, caller: Any) -> str:
        if cache is None:
            return caller()
        found = cache.get(key, caller)
        used = context.get(USED)
        if used is not None:
            used.append(found)
        # The block's output was escaped when it was rendered: in HTML it is safe markup.
        return Markup(found.text) if context.eval_ctx.autoescape else found.text

    return fragment
