"""Helpers the tiers share that are not test data: a free local port for a server a test
starts, and dkimpy's DNS look-up answered offline."""

from __future__ import annotations

import socket
from collections.abc import Callable

# The DKIM selector the tests sign with, and the default From's domain (so DKIM's d=).
SELECTOR = "digest2025"
DOMAIN = "newsroom.example.org"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_dns(record: bytes) -> Callable[..., bytes | None]:
    """dkimpy's DNS lookup, answered offline for our selector only."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None
    return dnsfunc
