"""The reader's personal Atom feed: ``/feed/<token>.atom``, linked from every digest's footer
and from the preferences page.

The token is signed for the ``feed`` purpose only, so a feed URL, which readers paste into
feed readers and share more freely than a manage link, opens nothing else; and the feed
carries no link back to the preferences or unsubscribe pages. A forged or altered token,
an erased reader and one who is not (or no longer) subscribed all get the same 404: the
URL says nothing about who was once behind it. Feed readers poll: the response carries an
ETag and Last-Modified and a conditional GET that finds nothing new gets 304.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from feedgen.feed import FeedGenerator
from sqlalchemy import select

from digest.errors import TokenError
from digest.models import Item, Subscriber, SubscriberStatus
from digest.selection.feed import feed_items
from digest.settings import Settings
from digest.tokens import feed_url, subscriber_from_token
from digest.web.deps import SessionDep, get_settings
from digest.web.pages.common import page

router = APIRouter(include_in_schema=False)

ATOM = "application/atom+xml; charset=utf-8"
# Feed readers may keep a copy for a few minutes; shared caches may not (the URL is personal).
FEED_CACHE = "private, max-age=300"


def _tag_authority(settings: Settings) -> str:
    return urlsplit(settings.public_base_url).hostname or "digest.invalid"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def build_feed(sub: Subscriber, items: list[Item], settings: Settings,
               self_url: str | None = None) -> tuple[bytes, datetime]:
    """The Atom document and the moment it last changed (the newest item's update, or the
    subscription's start for an empty feed): the same items give the same bytes.
    ``self_url``: the address the feed was fetched at. A freshly signed one would carry a new
    timestamp every second, so the bytes, and the ETag a feed reader sends back, would change
    with nothing new in the feed."""
    authority = _tag_authority(settings)
    changed = max((_aware(max(i.updated_at, i.ingested_at)) for i in items),
                  default=_aware(sub.confirmed_at or sub.created_at))
    fg = FeedGenerator()
    fg.id(f"tag:{authority},2025:feed:{sub.id}")
    fg.title(f"{settings.newsroom_name}: your digest items")
    fg.subtitle("The newest items that match your digest choices.")
    fg.author({"name": f"{settings.newsroom_name} digest"})
    fg.link(href=self_url or feed_url(sub.id, settings), rel="self",
            type="application/atom+xml")
    fg.link(href=settings.newsroom_url, rel="alternate", type="text/html")
    fg.language("en")
    fg.updated(changed)
    # feedgen prepends entries: add the oldest first so the document lists the newest first.
    for item in reversed(items):
        entry = fg.add_entry()
        entry.id(f"tag:{authority},2025:item:{item.id}")
        entry.title(" ".join(item.title.split()))
        entry.link(href=item.url or settings.newsroom_url, rel="alternate", type="text/html")
        if item.summary:
            entry.summary(item.summary)  # plain text: every tag was stripped at ingest
        entry.updated(_aware(max(item.updated_at, item.ingested_at)))
        if item.published_at is not None:
            entry.published(_aware(item.published_at))
        categories = [{"term": t.slug, "label": t.name, "scheme": "theme"} for t in item.themes]
        categories += [{"term": loc.slug, "label": loc.name, "scheme": "location"}
                       for loc in item.locations]
        if item.content_type is not None:
            categories.append({"term": item.content_type.slug, "label": item.content_type.name,
                               "scheme": "type"})
        if categories:
            entry.category(categories)
    return fg.atom_str(pretty=True), changed


def _not_modified(request: Request, etag: str, changed: datetime) -> bool:
    """RFC 9110: If-None-Match decides when present; else If-Modified-Since (to the second)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or etag in tags
    since = request.headers.get("if-modified-since")
    if since:
        try:
            moment = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        if moment.tzinfo is not None:
            return changed.replace(microsecond=0) <= moment
    return False


def _no_feed(request: Request) -> Response:
    return page(request, "message.html", 404, heading="No such feed",
                message="This feed address is not valid, or the subscription it belonged to "
                        "has ended.")


@router.get("/feed/{token}.atom")
def personal_feed(request: Request, token: str, session: SessionDep) -> Response:
    s = get_settings(request)
    try:
        subscriber_id = subscriber_from_token("feed", token, s)
    except TokenError:
        return _no_feed(request)
    sub = session.scalars(select(Subscriber).where(Subscriber.id == subscriber_id)).one_or_none()
    if sub is None or sub.status != SubscriberStatus.active:
        return _no_feed(request)
    self_url = f"{s.public_base_url.rstrip('/')}/feed/{token}.atom"
    body, changed = build_feed(sub, feed_items(session, sub.id, limit=s.feed_items), s,
                               self_url=self_url)
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Last-Modified": format_datetime(changed, usegmt=True),
               "Cache-Control": FEED_CACHE, "X-Robots-Tag": "noindex"}
    if _not_modified(request, etag, changed):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=ATOM, headers=headers)
