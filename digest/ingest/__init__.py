"""Ingest: read items from a listing text, an RSS/Atom feed or JSON, and store them.

Parsers are pure (text in, ``ItemIn`` list out): ``listing`` (the text form, read item by
item; ``listing_html`` the newsroom's HTML page, with links and the next page), ``feeds``
(with ``decode``, the strict charset rules), ``json_items``. ``store.store_items``
de-duplicates and writes; the ``ingest_*`` entry points (``sources``) read, parse and store
in one transaction, so a bad document writes nothing. Nothing here dispatches events: the
caller sends ``item_published`` for ``report.new_item_ids`` once the transaction has
committed.

Titles and summaries are stored as plain text (tags stripped, entities decoded); whatever
shows them escapes them again.
"""

from digest.ingest.feeds import parse_feed
from digest.ingest.fetch import fetch
from digest.ingest.json_items import parse_json_items
from digest.ingest.listing import parse_listing
from digest.ingest.parsed import ItemIn, to_plain_text
from digest.ingest.sources import MAX_FILE_BYTES, ingest_feed, ingest_json, ingest_listing
from digest.ingest.store import IngestReport, store_items

__all__ = [
    "MAX_FILE_BYTES",
    "IngestReport",
    "ItemIn",
    "fetch",
    "ingest_feed",
    "ingest_json",
    "ingest_listing",
    "parse_feed",
    "parse_json_items",
    "parse_listing",
    "store_items",
    "to_plain_text",
]
