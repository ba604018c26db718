"""Bad-input corpus, feeds without a database: a huge feed file is refused before it is read."""

from __future__ import annotations

import pytest

from digest.errors import IngestError
from digest.ingest import MAX_FILE_BYTES, ingest_feed
from tests.feeds import BIG, GOOD, NOW


def test_a_50_mb_feed_file_is_refused_before_it_is_read(sqlite_settings, tmp_path):
    path = tmp_path / "huge.rss"
    with path.open("wb") as f:  # sparse: 50 MB by size, nothing much on disk
        f.write(GOOD)
        f.truncate(BIG)
    with pytest.raises(IngestError) as caught:
        ingest_feed(path, now=NOW, settings=sqlite_settings)
    assert str(caught.value) == (
        f"cannot read {path}: it is {BIG} bytes, over the {MAX_FILE_BYTES}-byte limit; "
        "split it into smaller files"
    )
