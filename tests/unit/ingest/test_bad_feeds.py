"""Bad-input corpus, feeds without a database: a huge feed file is refused before it is read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.errors import IngestError
from digest.ingest import MAX_FILE_BYTES, ingest_feed

NOW = datetime(2025, 10, 12, 9, 0, tzinfo=UTC)
BIG = 50 * 1024 * 1024


def rss(*items: str, decl: str = "") -> str:
    body = "".join(f"<item>{item}</item>" for item in items)
    return f"{decl}<rss version=\"2.0\"><channel><title>Feed</title>{body}</channel></rss>"


def entry(title: str, guid: str, extra: str = "") -> str:
    return f"<title>{title}</title><guid>{guid}</guid>{extra}"


def decl(encoding: str) -> str:
    return f'<?xml version="1.0" encoding="{encoding}"?>\n'


GOOD = rss(entry("Already stored", "good-1")).encode()


def test_a_50_mb_feed_file_is_refused_before_it_is_read(sqlite_settings, tmp_path):
    path = tmp_path / "huge.rss"
    with path.open("wb") as f:  # sparse: 50 MB by size, nothing much on disk
        f.write(GOOD)
        f.truncate(BIG)
    with pytest.raises(IngestError) as caught:
        ingest_feed(path, now=NOW)
    assert str(caught.value) == (
        f"cannot read {path}: it is {BIG} bytes, over the {MAX_FILE_BYTES}-byte limit; "
        "split it into smaller files"
    )
