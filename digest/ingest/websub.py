"""WebSub (W3C Recommendation, 2018) as a subscriber: finding a feed's hub, subscribing to it
with a callback of our own, answering its intent verification, taking its signed pushes
through the same ingest as a poll, renewing the lease, and how often a source whose hub
pushes to us still needs polling (ADR 0035).

The subscription lives on the source's row (``websub_*``). Its states:

- ``requested``: asked of the hub, committed *before* the hub is asked (a hub may verify
  before it even answers); ``verified`` once the hub echoed our intent; a renewal keeps it
  ``verified`` (same callback, same secret) while the lease is still live;
- ``denied``: the hub refused (``hub.mode=denied``), failed to answer, or never verified
  within ``VERIFY_WITHIN``: polling goes on as usual, subscribing is tried again after
  ``RETRY_AFTER``;
- ``unsubscribed``: the source was paused; resuming it subscribes again.

Polling is the fallback, never switched off: while a subscription is verified, live and
the hub not quiet (``QUIET_AFTER``), a source is polled only every ``SAFETY_NET`` to catch
what a hub lost; otherwise at its own interval.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import feedparser
import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from digest.db import session_scope
from digest.errors import IngestError
from digest.ingest.documents import store_document
from digest.ingest.guard import check_public
from digest.models import Source, WebSubState, utcnow
from digest.settings import Settings

log = logging.getLogger(__name__)

VERIFY_WITHIN = timedelta(minutes=15)  # a hub that has not verified by then never will
RETRY_AFTER = timedelta(hours=6)  # a refused or failed subscription is asked again after this
QUIET_AFTER = timedelta(hours=48)  # no push and no verification for this long: poll as usual
SAFETY_NET = timedelta(hours=6)  # how often a source whose hub pushes is still polled
RENEW_AT_MOST = timedelta(days=1)  # a lease is renewed in its last tenth, or its last day
RENEW_AT_LEAST = timedelta(minutes=15)  # ... but never later than this before it ends
HUB_TIMEOUT = 10.0  # seconds for the hub to answer a (un)subscription request
# HMAC methods the spec registers; sha1 is kept because most hubs still sign with it, and
# HMAC-SHA1 is not broken as a MAC (ADR 0035).
SIGNATURE_METHODS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256,
                     "sha384": hashlib.sha384, "sha512": hashlib.sha512}
LIVE = (WebSubState.requested, WebSubState.verified)


# --- Discovery and the polling interval -----------------------------------------------------


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


def is_pushing(source: Source, *, now: datetime) -> bool:
    """Whether ``source``'s hub is pushing to us: the subscription verified, its lease live,
    and a push or a verification heard within ``QUIET_AFTER``."""
    if source.paused or source.websub_state is not WebSubState.verified:
        return False
    if source.websub_lease_until is None or source.websub_lease_until <= now:
        return False
    heard = [t for t in (source.websub_last_push_at, source.websub_requested_at) if t]
    return bool(heard) and now - max(heard) < QUIET_AFTER


def poll_every(source: Source, *, now: datetime) -> int:
    """Seconds until a healthy source's next poll: while its hub pushes (``is_pushing``)
    only a safety net every ``SAFETY_NET``, else its own interval (the fallback)."""
    if is_pushing(source, now=now):
        return max(source.every_seconds, int(SAFETY_NET.total_seconds()))
    return source.every_seconds


# --- Signatures -----------------------------------------------------------------------------


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``X-Hub-Signature`` (``method=hex``) is the HMAC of ``body`` with ``secret``,
    compared in constant time. No header, an unknown method or a malformed value: False."""
    method, _, given = (header or "").strip().partition("=")
    digest = SIGNATURE_METHODS.get(method.strip().lower())
    if digest is None or not given:
        return False
    expected = hmac.new(secret.encode(), body, digest).hexdigest()
    return hmac.compare_digest(expected, given.strip().lower())


# --- The hub's requests to our callback -----------------------------------------------------


def callback_url(settings: Settings, token: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}/websub/{token}"


def source_for_callback(session: Session, token: str) -> Source | None:
    if not token or len(token) > 64:
        return None
    return session.scalar(select(Source).where(Source.websub_callback == token))


def verify_intent(session: Session, token: str, params: Mapping[str, str], *,
                  now: datetime) -> str | None:
    """The hub's verification of ``hub.mode`` for the callback ``token``: the body to answer
    with 200 (the echoed ``hub.challenge``; empty for a denial taken note of), or None for
    404, the spec's "we did not ask for this". Flushes; the caller commits."""
    source = source_for_callback(session, token)
    mode, topic = params.get("hub.mode", ""), params.get("hub.topic", "")
    if source is None or topic != (source.topic_url or source.url):
        log.warning("websub: refused a %r verification for an unknown callback or topic %r",
                    mode[:20], topic[:200])
        return None
    if mode == "denied":
        reason = params.get("hub.reason", "").strip()[:500] or "no reason given"
        source.websub_state = WebSubState.denied
        source.websub_lease_until = None
        source.websub_error = (f"the hub {source.hub_url} refused the subscription: {reason}; "
                               "polling as usual")
        log.warning("websub: source %s denied by its hub: %s", source.id, reason)
        _fall_back(source, now)
        return ""
    challenge = params.get("hub.challenge", "")
    if mode == "unsubscribe" and source.websub_state is WebSubState.unsubscribed and challenge:
        return challenge
    if mode != "subscribe" or source.websub_state not in LIVE or source.paused or not challenge:
        log.warning("websub: refused a %r verification for source %s (subscription %s)",
                    mode[:20], source.id, source.websub_state)
        return None
    lease = params.get("hub.lease_seconds", "")
    if not lease.isdigit() or int(lease) <= 0:
        log.warning("websub: refused a verification for source %s without a lease (%r)",
                    source.id, lease[:20])
        return None
    source.websub_state = WebSubState.verified
    source.websub_lease_until = now + timedelta(seconds=int(lease))
    source.websub_error = None
    log.info("websub: source %s verified by its hub, lease %s s", source.id, lease)
    return challenge


class Push(enum.StrEnum):
    """What became of a push: ``stored`` (items stored, the rest ``refused``)."""
    stored = "stored"
    unsigned = "unsigned"  # no X-Hub-Signature: we always give a secret, so it is not the hub
    bad_signature = "bad_signature"  # forged, or signed with a secret that is not ours
    unreadable = "unreadable"  # signed, but not a document of the source's kind
    gone = "gone"  # unknown callback, or a subscription we left: 410, the hub may drop it


@dataclass
class PushResult:
    outcome: Push
    source_id: int | None = None
    new_item_ids: list[int] = field(default_factory=list)


def receive_push(session: Session, token: str, body: bytes, *, signature: str | None,
                 content_type: str | None, settings: Settings, now: datetime) -> PushResult:
    """A content distribution request to the callback ``token``: refused unless its
    ``X-Hub-Signature`` is our secret's HMAC of the body; else stored like a poll's document
    (``store_document``). Flushes; the caller commits, then announces ``new_item_ids``."""
    source = source_for_callback(session, token)
    if (source is None or source.paused or source.websub_state not in LIVE
            or not source.websub_secret):
        log.warning("websub: push to %s refused: no live subscription has this callback",
                    f"source {source.id}" if source else "an unknown callback")
        return PushResult(Push.gone, source.id if source else None)
    if not signature:
        log.warning("websub: push to source %s refused: it carries no X-Hub-Signature; "
                    "nothing stored", source.id)
        return PushResult(Push.unsigned, source.id)
    if not signature_matches(source.websub_secret, body, signature):
        log.warning("websub: push to source %s refused: its X-Hub-Signature (%s) does not "
                    "match our secret; nothing stored", source.id, signature.split("=")[0][:10])
        return PushResult(Push.bad_signature, source.id)
    try:
        report = store_document(session, source, body, content_type, settings=settings, now=now)
    except (IngestError, UnicodeDecodeError) as exc:  # raised by the parsing, before any write
        source.websub_error = f"a pushed document could not be read: {exc}"
        log.warning("websub: push to source %s not stored: %s", source.id, exc)
        return PushResult(Push.unreadable, source.id)
    source.websub_last_push_at = now
    source.items_added = (source.items_added or 0) + len(report.new_item_ids)
    log.info("websub: push to source %s stored: %s", source.id, report.summary())
    return PushResult(Push.stored, source.id, list(report.new_item_ids))


# --- Subscribing, renewing, giving up: the beat's pass -------------------------------------


@dataclass
class MaintainReport:
    subscribed: list[int] = field(default_factory=list)  # source ids asked of their hub
    renewed: list[int] = field(default_factory=list)
    unsubscribed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # refused now or never verified

    def summary(self) -> str:
        return (f"{len(self.subscribed)} subscribed, {len(self.renewed)} renewed, "
                f"{len(self.unsubscribed)} unsubscribed, {len(self.failed)} failed")

    def as_dict(self) -> dict[str, list[int]]:
        return {"subscribed": self.subscribed, "renewed": self.renewed,
                "unsubscribed": self.unsubscribed, "failed": self.failed}


class _Step(enum.Enum):
    subscribe = "subscribe"
    renew = "renew"
    unsubscribe = "unsubscribe"
    give_up = "give_up"


def renew_margin(source: Source) -> timedelta:
    """How long before its end a lease is renewed: its last tenth, at most a day, at least
    ``RENEW_AT_LEAST`` (the beat must get a pass in)."""
    granted = (source.websub_lease_until - source.websub_requested_at
               if source.websub_lease_until and source.websub_requested_at else RENEW_AT_MOST)
    return max(RENEW_AT_LEAST, min(RENEW_AT_MOST, granted / 10))


def _step_for(source: Source, now: datetime) -> _Step | None:
    state, asked = source.websub_state, source.websub_requested_at
    if source.paused or not source.hub_url:
        return _Step.unsubscribe if state in LIVE and source.hub_url else None
    if state is None or state is WebSubState.unsubscribed:
        return _Step.subscribe
    if state is WebSubState.denied:
        return _Step.subscribe if asked is None or now - asked >= RETRY_AFTER else None
    if state is WebSubState.requested:
        return _Step.give_up if asked is None or now - asked >= VERIFY_WITHIN else None
    lease_until = source.websub_lease_until
    if lease_until is None or lease_until <= now:
        return _Step.subscribe  # lapsed: the hub has forgotten us, start afresh
    renewing_since = lease_until - renew_margin(source)
    if now < renewing_since:
        return None
    # In the renewal window: ask once, and again only if that request went unverified.
    if asked is not None and asked >= renewing_since and now - asked < VERIFY_WITHIN:
        return None
    return _Step.renew


def maintain(settings: Settings, *, now: datetime | None = None) -> MaintainReport:
    """The beat's WebSub pass (every few minutes; ``digest tick`` too): subscribe sources
    that name a hub and have no live subscription, renew leases near their end, give up on
    subscriptions the hub never verified (polling goes on as usual), unsubscribe paused
    sources. Each source in transactions of its own; a hub that fails is recorded in words
    (``websub_error``) and tried again later, never raised."""
    now = utcnow() if now is None else now
    report = MaintainReport()
    with session_scope(settings.database_url) as session:
        ids = list(session.scalars(
            select(Source.id).where(or_(Source.hub_url.is_not(None),
                                        Source.websub_state.is_not(None)))
            .order_by(Source.id)))
    for source_id in ids:
        with session_scope(settings.database_url) as session:
            source = session.get(Source, source_id)
            if source is None:
                continue
            step = _step_for(source, now)
            if step is None:
                _fall_back(source, now)
                continue
            if step is _Step.give_up:
                _give_up(source, now)
                report.failed.append(source_id)
                continue
            request = _prepare(source, step, settings, now)
        # Committed before the hub is asked: it may verify before it answers.
        error = _ask_hub(request, settings)
        with session_scope(settings.database_url) as session:
            source = session.get(Source, source_id)
            if source is None:
                continue
            _record(source, step, request, error, now)
        if error is not None:
            report.failed.append(source_id)
        else:
            {_Step.subscribe: report.subscribed, _Step.renew: report.renewed,
             _Step.unsubscribe: report.unsubscribed}[step].append(source_id)
    return report


@dataclass
class _HubRequest:
    hub: str
    form: dict[str, str]


def _prepare(source: Source, step: _Step, settings: Settings, now: datetime) -> _HubRequest:
    """The hub request for ``step``, with the source's row set as it must be when the hub's
    verification arrives."""
    assert source.hub_url is not None
    topic = source.topic_url or source.url
    if step is _Step.unsubscribe:
        source.websub_state = WebSubState.unsubscribed
        source.websub_lease_until = None
        mode = "unsubscribe"
    else:
        if step is _Step.subscribe:  # a fresh subscription: a new callback and secret
            source.websub_callback = secrets.token_urlsafe(24)
            source.websub_secret = secrets.token_urlsafe(32)
            source.websub_state = WebSubState.requested
            source.websub_lease_until = None
        source.websub_requested_at = now
        mode = "subscribe"
    assert source.websub_callback is not None and source.websub_secret is not None
    form = {"hub.mode": mode, "hub.topic": topic,
            "hub.callback": callback_url(settings, source.websub_callback)}
    if mode == "subscribe":
        form["hub.secret"] = source.websub_secret
        form["hub.lease_seconds"] = str(settings.websub_lease_seconds)
    return _HubRequest(source.hub_url, form)


def _ask_hub(request: _HubRequest, settings: Settings) -> str | None:
    """POST the (un)subscription request; None when the hub accepted it (2xx), else what
    went wrong, in words."""
    mode = request.form["hub.mode"]
    try:
        _check_callback_reachable(settings)
        check_public(request.hub, allow_private=settings.sources_allow_private)
        response = httpx.post(request.hub, data=request.form, timeout=HUB_TIMEOUT,
                              follow_redirects=False)
    except IngestError as exc:
        return str(exc)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return f"the hub {request.hub} did not answer the {mode} request: {exc}"
    if not response.is_success:
        words = response.text.strip().replace("\n", " ")[:200]
        return (f"the hub {request.hub} refused the {mode} request: HTTP "
                f"{response.status_code}{': ' + words if words else ''}")
    return None


def _check_callback_reachable(settings: Settings) -> None:
    """IngestError when our callback is on a loopback or private address (the default
    ``DIGEST_PUBLIC_BASE_URL``) and private addresses are not allowed: no hub on the internet
    could verify it, so asking would only wait out ``VERIFY_WITHIN``."""
    host = urlsplit(settings.public_base_url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        private = host == "localhost" or host.endswith(".localhost")
    else:
        private = not address.is_global
    if private and not settings.sources_allow_private:
        raise IngestError(
            f"DIGEST_PUBLIC_BASE_URL ({settings.public_base_url}) is not an address a hub can "
            "call back; set it to the web app's public address (or DIGEST_SOURCES_ALLOW_"
            "PRIVATE=true for a hub on the internal network)")


def _record(source: Source, step: _Step, request: _HubRequest, error: str | None,
            now: datetime) -> None:
    if error is None:
        log.info("websub: source %s: %s request accepted by %s", source.id,
                 request.form["hub.mode"], request.hub)
        return
    log.warning("websub: source %s: %s", source.id, error)
    if step is _Step.renew and source.websub_lease_until and source.websub_lease_until > now:
        source.websub_error = f"renewing the lease failed ({error}); tried again shortly"
        return
    if step is _Step.unsubscribe:
        source.websub_error = f"{error}; the hub will stop when the lease ends"
        return
    source.websub_state = WebSubState.denied
    source.websub_error = f"{error}; polling as usual, subscribing again in {_words(RETRY_AFTER)}"
    _fall_back(source, now)


def _fall_back(source: Source, now: datetime) -> None:
    """A source whose hub stopped pushing (quiet, lapsed, refused) is polled at its own
    interval again from now, not after the safety net's long wait; a failing source keeps
    its back-off."""
    due_by = now + timedelta(seconds=source.every_seconds)
    if (not is_pushing(source, now=now) and not source.paused
            and not source.consecutive_failures and source.next_poll_at > due_by):
        source.next_poll_at = due_by


def _give_up(source: Source, now: datetime) -> None:
    source.websub_state = WebSubState.denied
    source.websub_lease_until = None
    source.websub_error = (
        f"the hub {source.hub_url} did not verify the subscription within "
        f"{_words(VERIFY_WITHIN)}; polling as usual, subscribing again in {_words(RETRY_AFTER)}")
    log.warning("websub: source %s: %s", source.id, source.websub_error)
    _fall_back(source, now)


def _words(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} hours" if minutes % 60 == 0 else f"{minutes} minutes"
