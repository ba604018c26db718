"""HTTP fetching with timeouts, a redirect limit and a size cap."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from digest.errors import IngestError
from digest.ingest.decode import charset_of
from digest.ingest.parsed import is_web_url

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
