"""Where a fetch may go: a source or a WebSub hub is an address an operator (or a feed) typed,
so without this guard it could be pointed at the internal network (``http://127.0.0.1:6379``,
a cloud's metadata address) and its errors read back. Every address a host name resolves to
is checked, at registration and again before each request (a name can be re-pointed), and
the address a connection actually reached is checked before its answer is read
(``check_peer``: a name that resolved to a public address for the check and to a private one
for the connection, DNS rebinding, is caught there)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from digest.errors import IngestError


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_public(url: str, *, allow_private: bool) -> None:
    """IngestError unless every address ``url``'s host resolves to is a public one (or
    ``allow_private``, ``DIGEST_SOURCES_ALLOW_PRIVATE``). The host must resolve."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IngestError(f"cannot fetch {url!r}: only http:// and https:// URLs with a host "
                          "are read")
    if allow_private:
        return
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise IngestError(f"cannot fetch {url}: the host {host!r} does not resolve "
                          f"({exc})") from None
    private = sorted({str(info[4][0]) for info in infos if not _is_public(str(info[4][0]))})
    if private:
        raise IngestError(
            f"refused to fetch {url}: {host} resolves to the private or loopback address "
            f"{', '.join(private)}; set DIGEST_SOURCES_ALLOW_PRIVATE=true if this source is "
            "meant to be on the internal network")


def check_peer(address: str | None, url: str, *, allow_private: bool) -> None:
    """IngestError when the connection for ``url`` reached a private or loopback ``address``
    (unless allowed); nothing of the answer is read then. None (no address known) passes: the
    name was checked before connecting."""
    if allow_private or not address or _is_public(address):
        return
    raise IngestError(
        f"refused to read {url}: the connection reached the private or loopback address "
        f"{address} although the name resolved to a public one when checked (a name re-pointed "
        "between two look-ups); set DIGEST_SOURCES_ALLOW_PRIVATE=true if this source is meant "
        "to be on the internal network")
