"""HTTP fetching with timeouts, a redirect limit and a size cap; and a registered source's
conditional fetch (``fetch_source``), every redirect hop checked by ``guard.check_public``."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import urljoin

import httpx

from digest.errors import IngestError
from digest.ingest.decode import charset_of
from digest.ingest.guard import check_peer, check_public
from digest.ingest.parsed import is_web_url
from digest.models import utcnow

MAX_FETCH_BYTES = 5 * 1024 * 1024


@dataclass
class Fetched:
    body: bytes
    content_type: str | None  # the response's Content-Type header, as sent

    @property
    def charset(self) -> str | None:
        return charset_of(self.content_type)


def fetch(url: str, timeout: float = 10, max_bytes: int = MAX_FETCH_BYTES) -> bytes:
    """The body at an http(s) URL, read up to ``max_bytes``; IngestError on any failure."""
    return fetch_document(url, timeout, max_bytes).body


def fetch_document(url: str, timeout: float = 10, max_bytes: int = MAX_FETCH_BYTES) -> Fetched:
    """The body and Content-Type at an http(s) URL (see ``fetch``)."""
    if not is_web_url(url):
        raise IngestError(f"cannot fetch {url!r}: only http:// and https:// URLs are read")
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise IngestError(
                    f"fetching {url} failed: HTTP {response.status_code} "
                    f"{response.reason_phrase}"
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise IngestError(
                    f"{url} is {int(declared)} bytes, over the {max_bytes}-byte limit"
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise IngestError(
                        f"{url} sent more than the {max_bytes}-byte limit; stopped reading"
                    )
            return Fetched(bytes(body), response.headers.get("content-type"))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise IngestError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None


# --- A registered source's fetch (``ingest.polling``): conditional, polite, guarded. -------

USER_AGENT = "Digest/1.0 (newsroom digest mailer; polls registered sources)"
MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
_PERMANENT = {301, 308}
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


@dataclass
class SourceResponse:
    """One answer to a source's conditional GET, after any redirects."""
    status: int
    body: bytes
    content_type: str | None
    etag: str | None  # the validators to send next time (None: the server sent none)
    last_modified: str | None
    final_url: str  # where the body came from
    moved_permanently: bool  # every redirect on the way was a 301 or 308: store final_url
    retry_after: int | None  # seconds, from Retry-After (seconds or an HTTP-date)
    max_age: int | None  # seconds, from Cache-Control: max-age
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names

    @property
    def size(self) -> int:
        return len(self.body)


def parse_retry_after(value: str | None, *, now: datetime) -> int | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110
    10.2.3); None when absent or unreadable, 0 for a date already past."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    at = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return max(0, int((when - at).total_seconds()))


def parse_max_age(value: str | None) -> int | None:
    """``max-age`` seconds of a ``Cache-Control`` header; None when absent (or ``no-store``)."""
    if not value or "no-store" in value.lower():
        return None
    match = _MAX_AGE.search(value)
    return int(match.group(1)) if match else None


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context (httpx's own CA bundle) for every poll: building one loads
    the bundle, about 20 ms, which was two fifths of a 304 poll (bench/sources.py)."""
    return httpx.create_ssl_context()


def fetch_source(url: str, *, etag: str | None = None, last_modified: str | None = None,
                 allow_private: bool = False, max_bytes: int = MAX_FETCH_BYTES,
                 timeout: float = 20, now: datetime | None = None) -> SourceResponse:
    """GET ``url`` as a polite poller: with If-None-Match / If-Modified-Since from the last
    answer's validators and a User-Agent naming Digest, following at most
    ``MAX_REDIRECTS`` redirects itself so every hop is checked by ``check_public``. Any
    status comes back (the poller decides what a 304, 429 or 500 means); the body is read
    only from a 2xx, and refused past ``max_bytes`` (after reading at most that many).
    IngestError: a refused or unreachable address, a redirect loop, too many redirects, a
    body too large."""
    now = utcnow() if now is None else now
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    seen: list[str] = []
    permanent = True
    current = url
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False,
                          verify=_tls_context()) as client:
            while True:
                check_public(current, allow_private=allow_private)
                seen.append(current)
                with client.stream("GET", current, headers=headers) as response:
                    check_peer(_peer_address(response), current, allow_private=allow_private)
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        permanent = permanent and response.status_code in _PERMANENT
                        current = _next_hop(current, location, seen)
                        continue
                    body = (_read_capped(response, current, max_bytes)
                            if 200 <= response.status_code < 300 else b"")
                    answer = {k.lower(): v for k, v in response.headers.items()}
                    return SourceResponse(
                        status=response.status_code, body=body,
                        content_type=answer.get("content-type"),
                        etag=answer.get("etag"), last_modified=answer.get("last-modified"),
                        final_url=current, moved_permanently=permanent and current != url,
                        retry_after=parse_retry_after(answer.get("retry-after"), now=now),
                        max_age=parse_max_age(answer.get("cache-control")), headers=answer)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise IngestError(f"fetching {current} failed: {type(exc).__name__}: {exc}") from None


def _peer_address(response: httpx.Response) -> str | None:
    """The IP address the response came from (httpcore's stream knows it)."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _next_hop(current: str, location: str, seen: list[str]) -> str:
    target = urljoin(current, location.strip())
    if target in seen:
        raise IngestError(f"redirect loop fetching {seen[0]}: {current} sends back to {target}; "
                          "fix the source's URL (or the server's redirects)")
    if len(seen) > MAX_REDIRECTS:
        raise IngestError(f"too many redirects fetching {seen[0]} (more than {MAX_REDIRECTS}); "
                          "register the address it ends at")
    return target


def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise IngestError(f"{url} is {int(declared)} bytes, over the {max_bytes}-byte limit "
                          "(DIGEST_SOURCE_MAX_BYTES); not read")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise IngestError(f"{url} sent more than the {max_bytes}-byte limit "
                              "(DIGEST_SOURCE_MAX_BYTES); stopped reading")
    return bytes(body)
