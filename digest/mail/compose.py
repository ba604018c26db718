"""The one composition path: every mail Digest sends, and every rendering of one.

Digests, alerts, confirmations, previews and "view in browser" all go through
``MessageFactory``: one recipient builder (the reader's links and choices), one template
choice, one header builder (Message-ID, List-*, Feedback-ID, the VERP envelope sender) and
one signer. So every mail is DKIM-signed when DKIM is configured, and a preview is the
message the reader would get, only without links that need a delivery row.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlencode

from digest.mail.dkim import DkimSigner
from digest.mail.mime import build_message, make_message_id
from digest.mail.shared import content_key, shared_contents
from digest.models import RunKind, Subscriber
from digest.render import (
    Recipient,
    RenderedEmail,
    RenderItem,
    get_renderer,
    render_items_from_models,
)
from digest.selection import preview_items
from digest.settings import Settings
from digest.tokens import links_for, make_token, subscriber_token

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "Headers",
    "MessageFactory",
    "Preview",
    "Reader",
    "confirm_url",
    "preview",
    "preview_view_url",
    "view_url",
]


def view_url(settings: Settings, delivery_id: int) -> str:
    """The "view in browser" link of one delivery."""
    token = make_token("view", {"d": delivery_id}, settings)
    return f"{settings.public_base_url.rstrip('/')}/view/{token}"


def preview_view_url(settings: Settings) -> str:
    """Where a preview's "view in browser" link points: the real one needs the delivery row,
    which only planning creates; the link is kept so the preview has the mail's layout."""
    return f"{settings.public_base_url.rstrip('/')}/view/preview"


def confirm_url(subscriber_id: int, settings: Settings) -> str:
    token = subscriber_token("confirm", subscriber_id, settings)
    return f"{settings.public_base_url.rstrip('/')}/confirm/{token}"


@dataclass(frozen=True)
class Reader:
    """What a message needs of its subscriber: the choices that shape it (themes and places
    of all filters, in filter order, each once), grouping and time zone. Loaded in one query
    per batch by ``digest.delivery.load_batch``; ``of`` reads it off an ORM subscriber."""

    id: int
    group_by: str
    timezone: str
    themes: tuple[str, ...]
    locations: tuple[str, ...]

    @classmethod
    def of(cls, sub: Subscriber) -> Reader:
        return cls(id=sub.id, group_by=sub.group_by, timezone=sub.timezone,
                   themes=tuple(dict.fromkeys(t.name for f in sub.filters for t in f.themes)),
                   locations=tuple(dict.fromkeys(
                       loc.name for f in sub.filters for loc in f.locations)))


class MailedDelivery(Protocol):
    """A delivery as composing reads it: an ORM ``Delivery`` or ``load_batch``'s snapshot."""

    @property
    def id(self) -> int: ...
    @property
    def run_id(self) -> int: ...
    @property
    def subscriber_id(self) -> int: ...
    @property
    def email(self) -> str: ...
    @property
    def subscriber(self) -> Subscriber | Reader: ...


class MailedRun(Protocol):
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class Headers:
    """What a message carries besides its rendered content, from ``MessageFactory.headers``."""

    mail_from: str  # the envelope sender (SMTP MAIL FROM)
    message_id: str
    list_id: str | None = None
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    feedback_id: str | None = None
    precedence_bulk: bool = True
    extra: dict[str, str] = field(default_factory=dict)


class MessageFactory:
    """Everything that is the same for every message of a batch is prepared once here.

    Rendered item blocks and their encoded bytes are cached by the process's renderers
    (``get_renderer``), not here: a factory lives for one batch, the renderer for all the
    batches of a worker, which share the week's items; so are whole contents (the same
    items for readers who see them alike: ``digest.mail.shared``, ADR 0028), whose shared
    parts are rendered, encoded and canonicalised for DKIM once. ``fragments=False``
    renders and encodes every block for every message (the plain path the cached one must
    equal, byte for byte; ``shared`` alone turns the per-content path on or off).
    """

    def __init__(self, settings: Settings, *, fragments: bool = True,
                 shared: bool | None = None):
        self.settings = settings
        self.fragments = fragments
        # Render once per distinct content (``digest.mail.shared``); off with the fragments
        # unless asked for: the plain path renders and encodes every message whole.
        self.shared = fragments if shared is None else shared
        # Read once per factory: a key that cannot be read is a ConfigError here, before
        # anything is sent.
        self.dkim = DkimSigner.from_settings(settings)
        self.domain = settings.from_domain
        self.feedback_id = f"digest:{settings.list_id.split('<')[-1].strip('> ')}:newsroom"

    # --- the reader and the content ------------------------------------------------------

    def recipient(self, sub: Subscriber | Reader, email: str, *,
                  links: dict[str, str] | None = None,
                  view_url: str | None = None) -> Recipient:
        """The reader as templates see them: links, grouping, time zone and choices."""
        reader = sub if isinstance(sub, Reader) else Reader.of(sub)
        links = links or links_for(reader.id, self.settings)
        return Recipient(subscriber_id=reader.id, email=email, group_by=reader.group_by,
                         manage_url=links["manage_url"],
                         unsubscribe_url=links["unsubscribe_url"], view_url=view_url,
                         feed_url=links.get("feed_url", ""),
                         timezone=reader.timezone, themes=reader.themes,
                         locations=reader.locations)

    @staticmethod
    def template_for(kind: str, items: Sequence[RenderItem]) -> str:
        """An immediate run's single item is an alert; everything else is a digest."""
        return "alert" if kind == RunKind.immediate and len(items) == 1 else "digest"

    def render_for(self, sub: Subscriber | Reader, email: str, kind: str,
                   items: Sequence[RenderItem], *, links: dict[str, str] | None = None,
                   view_url: str | None = None) -> RenderedEmail:
        """The personal part of a digest or alert of a run of ``kind``: the reader's links,
        choices and items in the template the kind and the items call for."""
        recipient = self.recipient(sub, email, links=links, view_url=view_url)
        # By id first: the renderer orders newest first and keeps ties in the order given,
        # so a preview and the mail list items published at the same moment alike.
        items = sorted(items, key=lambda it: it.id)
        template = self.template_for(kind, items)
        context: dict[str, object] = {}
        if template == "digest":
            context["more_url"] = self.more_url(recipient.themes, recipient.locations)
            dates = [it.published_at.date() for it in items if it.published_at]
            if dates:
                context |= {"period_start": min(dates), "period_end": max(dates)}
        renderer = get_renderer(template, self.settings, fragments=self.fragments)
        if not self.shared:
            return renderer.render(recipient, items, **context)
        # Rendered once per distinct content, the reader's parts filled in (mail.shared).
        key, family = content_key(template, renderer, recipient, items)
        return shared_contents.render(
            key, renderer, recipient, lambda reader: renderer.render(reader, items, **context),
            family)

    def render(self, delivery: MailedDelivery, run: MailedRun, items: Sequence[RenderItem], *,
               in_browser: bool = False, links: dict[str, str] | None = None) -> RenderedEmail:
        """One delivery's subject, HTML and text; ``in_browser``: without the link to itself."""
        view = None if in_browser else view_url(self.settings, delivery.id)
        return self.render_for(delivery.subscriber, delivery.email, run.kind, items,
                               links=links, view_url=view)

    # --- headers and bytes -----------------------------------------------------------------

    def headers(self, subscriber_id: int, *, delivery: MailedDelivery | None = None,
                unsubscribe_url: str | None = None, purpose: str = "confirm") -> Headers:
        """The one header builder. A delivery (a digest or an alert) is list mail: a
        Message-ID stable per delivery, List-Id, List-Unsubscribe (one-click), Feedback-ID
        and a VERP envelope sender that names the delivery. Anything else is a transactional
        mail to one reader (``purpose``, e.g. a confirmation): a Message-ID unique per email
        and none of the list headers."""
        s = self.settings
        if delivery is None:
            # Unique per email: two confirmations are two messages, not a retry of one.
            local = f"{purpose}.{subscriber_id}.{secrets.token_hex(8)}"
            return Headers(mail_from=parseaddr(s.from_address)[1],
                           message_id=make_message_id(local, self.domain),
                           precedence_bulk=False)
        return Headers(
            mail_from=self.return_path(delivery.id),
            # Stable per delivery: a retried send carries the same Message-ID.
            message_id=make_message_id(f"digest.{delivery.run_id}.{delivery.id}", self.domain),
            list_id=s.list_id, unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=(f"mailto:unsubscribe@{self.domain}"
                                f"?subject=unsubscribe%20{subscriber_id}"),
            feedback_id=self.feedback_id, extra={"X-Digest-Delivery": str(delivery.id)},
        )

    def seal(self, to_addr: str, rendered: RenderedEmail, headers: Headers) -> bytes:
        """The bytes to send: the one place a message is assembled, and signed when DKIM
        is configured. Nothing may touch them afterwards."""
        s = self.settings
        data = build_message(
            from_addr=s.from_address, to_addr=to_addr, subject=rendered.subject,
            html=rendered.html, text=rendered.text, message_id=headers.message_id,
            list_id=headers.list_id, unsubscribe_url=headers.unsubscribe_url,
            unsubscribe_mailto=headers.unsubscribe_mailto, feedback_id=headers.feedback_id,
            reply_to=s.reply_to, precedence_bulk=headers.precedence_bulk,
            extra_headers=headers.extra or None, smtputf8=s.smtputf8,
            html_fragments=rendered.html_fragments, text_fragments=rendered.text_fragments,
            boundary=rendered.boundary,
        )
        if self.dkim is None:
            return data
        if rendered.boundary is None:
            return self.dkim.sign(data)
        # A shared content's encoded starts (text, then HTML): canonicalised once for all
        # its readers, and the body hash's state after the first copied (dkim.py).
        shared = [piece for fragment in (rendered.text_fragments[:1]
                                         + rendered.html_fragments[:1])
                  if (piece := fragment.encoded.get(0))]
        return self.dkim.sign(data, shared)

    def build(self, delivery: MailedDelivery, run: MailedRun,
              items: Sequence[RenderItem]) -> tuple[str, bytes]:
        """(Message-ID, the bytes to send) for one delivery, signed when DKIM is configured."""
        links = links_for(delivery.subscriber_id, self.settings)  # signed once: body and headers
        rendered = self.render(delivery, run, items, links=links)
        headers = self.headers(delivery.subscriber_id, delivery=delivery,
                               unsubscribe_url=links["unsubscribe_url"])
        return headers.message_id, self.seal(delivery.email, rendered, headers)

    def confirmation(self, sub: Subscriber, filters: Sequence[str]) -> tuple[Headers, bytes]:
        """The double opt-in email (also the "send me my link" email) for ``sub``, whose
        ``filters`` are described in words; (its headers, the bytes to send)."""
        # No feed link: the feed opens once the address is confirmed.
        links = links_for(sub.id, self.settings) | {"feed_url": ""}
        rendered = get_renderer("confirm", self.settings, fragments=self.fragments).render(
            self.recipient(sub, sub.email, links=links), (),
            confirm_url=confirm_url(sub.id, self.settings),
            filters=list(filters))
        headers = self.headers(sub.id, purpose="confirm")
        return headers, self.seal(sub.email, rendered, headers)

    def more_url(self, themes: tuple[str, ...], places: tuple[str, ...]) -> str:
        """The newsroom listing filtered to the reader's choices ("and K more")."""
        query = urlencode([("theme", t) for t in themes] + [("location", p) for p in places])
        return f"{self.settings.newsroom_url}?{query}" if query else self.settings.newsroom_url

    def return_path(self, delivery_id: int) -> str:
        # VERP: a bounce to this address names its delivery.
        return f"bounces+{delivery_id}@{self.domain}"


@dataclass(frozen=True)
class Preview:
    rendered: RenderedEmail
    item_count: int


def preview(session: Session, sub: Subscriber, *, as_of: datetime | None = None,
            settings: Settings) -> Preview:
    """The next scheduled digest of ``sub`` at ``as_of``, rendered as it would be mailed
    (same items, template, themes, period and "more" link); writes and sends nothing.

    An immediate subscriber's one waiting item previews as the alert they would get.
    """
    s = settings
    items = render_items_from_models(preview_items(session, sub, as_of=as_of, settings=s))
    factory = MessageFactory(s)
    rendered = factory.render_for(sub, sub.email, sub.frequency, items,
                                  view_url=preview_view_url(s))
    return Preview(rendered, len(items))
