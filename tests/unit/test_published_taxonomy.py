"""The shipped taxonomy (digest/data/taxonomy.json) is the seed listing's: every theme,
location and content type the listing uses, and nothing it does not (but the second type its
heading names)."""

from __future__ import annotations

from digest.ingest import parse_listing
from digest.taxonomy import PUBLISHED_FILE, read_published, region_of, slugify
from tests.conftest import SEED_LISTING


def test_the_shipped_taxonomy_holds_exactly_what_the_seed_listing_publishes():
    items = parse_listing(SEED_LISTING.read_text(encoding="utf-8"))
    shipped = read_published(PUBLISHED_FILE)
    assert sorted(shipped["theme"]) == sorted({t for i in items for t in i.themes})
    assert sorted(shipped["location"]) == sorted({loc for i in items for loc in i.locations})
    listed_types = {i.content_type for i in items if i.content_type}
    assert set(shipped["content_type"]) == listed_types | {"Press release"}
    assert "News and press releases" in SEED_LISTING.read_text(encoding="utf-8")
    # Each location's region comes from regions.json, the one place that says it.
    assert region_of()[slugify("OSCE Mission to Serbia")] == "South-Eastern Europe"
