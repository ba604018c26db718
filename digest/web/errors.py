"""The one place where the project's errors become HTTP answers.

API routes get JSON (``{"detail": ...}`` plus fields that help a client fix the request);
pages get the error page. A write refused by a unique constraint (two requests at the same
moment) is a 409 (``conflict_problem``); anything else that is not a ``DigestError`` is a
bug and stays a 500.
"""

from __future__ import annotations

from typing import Any

from digest.errors import (
    ConfigError,
    DeliveryError,
    DigestError,
    IngestError,
    NotFoundError,
    RateLimitError,
    TokenError,
    UnknownTaxonomyError,
    ValidationError,
)

# Most specific first.
_STATUS: list[tuple[type[DigestError], int]] = [
    (RateLimitError, 429),
    (NotFoundError, 404),
    (ValidationError, 422),  # includes UnknownTaxonomyError and HeaderInjectionError
    (IngestError, 422),
    (TokenError, 400),
    (DeliveryError, 503),  # the SMTP server did not take the email: try again later
    (ConfigError, 500),
]

# Where the valid values of each facet can be read (API routes).
VALID_LIST_PATHS = {
    "theme": "/api/v1/taxonomy/theme",
    "location": "/api/v1/taxonomy/location",
    "content_type": "/api/v1/taxonomy/content_type",
    "time zone": "/api/v1/timezones",
}


def status_for(exc: DigestError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def headers_for(exc: DigestError) -> dict[str, str]:
    if isinstance(exc, RateLimitError):
        return {"Retry-After": str(exc.retry_after)}
    return {}


def problem(exc: DigestError) -> dict[str, Any]:
    """The JSON body of an API error."""
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, UnknownTaxonomyError):
        body |= {
            "facet": exc.facet,
            "invalid": exc.values,
            "valid": exc.valid,
            "valid_list": VALID_LIST_PATHS.get(exc.facet),
        }
    elif isinstance(exc, ValidationError) and "time zone" in str(exc):
        body["valid_list"] = VALID_LIST_PATHS["time zone"]
    elif isinstance(exc, RateLimitError):
        body["retry_after"] = exc.retry_after
    return body


# A unique constraint that refused a write another request made at the same moment. The
# writes that race on purpose (sign-ups, imports, taxonomy) are upserts; anything that still
# ends here is a conflict the client can resolve by sending the request again, not a bug
# to show as a 500.
CONFLICT_DETAIL = (
    "another request changed the same record at the same moment, so this one was not "
    "saved; send it again"
)


def conflict_problem() -> dict[str, Any]:
    """The JSON body of a 409 for a write refused by a unique constraint."""
    return {"detail": CONFLICT_DETAIL}
