"""Ingest input the tiers share: the demo listing, and small feed documents for the
bad-input feed tests."""

from __future__ import annotations

from datetime import UTC, datetime

from digest.ingest import ItemIn, parse_listing
from tests.conftest import ROOT

DEMO = ROOT / "digest" / "data" / "demo-newsroom.txt"

NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)
BIG = 50 * 1024 * 1024


def demo_items() -> list[ItemIn]:
    """The demo listing's items, parsed (nothing stored)."""
    return parse_listing(DEMO.read_text(encoding="utf-8"))


def rss(*items: str, decl: str = "") -> str:
    body = "".join(f"<item>{item}</item>" for item in items)
    return f"{decl}<rss version=\"2.0\"><channel><title>Feed</title>{body}</channel></rss>"


def entry(title: str, guid: str, extra: str = "") -> str:
    return f"<title>{title}</title><guid>{guid}</guid>{extra}"


def decl(encoding: str) -> str:
    return f'<?xml version="1.0" encoding="{encoding}"?>\n'


GOOD = rss(entry("Already stored", "good-1")).encode()
