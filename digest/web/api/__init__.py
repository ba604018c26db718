"""JSON API under /api/v1 (bearer token ``DIGEST_API_TOKEN``), documented at /docs.

Subscribers (CRUD with their filters, CSV import/export), items (publish + the
item_published event; read with filters and a cursor), the taxonomy (rename, merge, move,
the review list), ad-hoc runs (dry run supported) with progress counts, deliveries,
bounce reports: one module per resource, their bodies in ``schemas``. Every input is
bounded (lengths, ids that fit the database's integers, sane dates), so bad input is a 4xx
answer and never a database error. The project's errors become HTTP answers in
``digest.web.errors``; unknown themes, locations, types and time zones are a 422 that names
the bad value and where the valid list is.
"""

from digest.web.api.auth import require_token
from digest.web.api.routes import router

__all__ = ["require_token", "router"]
