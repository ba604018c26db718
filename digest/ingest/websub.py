"""WebSub (W3C Recommendation, 2018): finding a feed's hub, and how often a source whose hub
pushes to us still needs polling."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import feedparser

from digest.models import Source


def discover(body: bytes, headers: Mapping[str, str], url: str) -> tuple[str, str] | None:
    """The (hub, topic) a feed advertises, from an HTTP ``Link`` header or the feed's own
    ``<link rel="hub">`` / ``<link rel="self">``; None when it names no hub."""
    hub = topic = None
    for link in (headers.get("link") or "").split(","):
        target, _, params = link.strip().partition(";")
        rel = params.replace(" ", "").lower()
        href = target.strip().strip("<>")
        if 'rel="hub"' in rel or "rel=hub" in rel:
            hub = hub or href
        elif 'rel="self"' in rel or "rel=self" in rel:
            topic = topic or href
    if hub is None:
        parsed = feedparser.parse(body)
        for link in parsed.get("feed", {}).get("links", []):
            if link.get("rel") == "hub" and not hub:
                hub = link.get("href")
            elif link.get("rel") == "self" and not topic:
                topic = link.get("href")
    if not hub:
        return None
    return hub, topic or url


def poll_every(source: Source, *, now: datetime) -> int:
    """Seconds until a healthy source's next poll: its own interval (pushes do not change it
    yet)."""
    return source.every_seconds
