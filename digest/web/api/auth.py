"""The API's bearer token: ``Authorization: Bearer <DIGEST_API_TOKEN>`` on every call."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from digest.web.deps import get_settings

_bearer = HTTPBearer(auto_error=False, description="The value of DIGEST_API_TOKEN.")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = get_settings(request).api_token
    given = credentials.credentials if credentials else ""
    # compare_digest: the time taken does not tell how much of a guess was right.
    if (
        expected is None
        or not expected.get_secret_value()
        or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        raise HTTPException(
            401,
            "API token missing or wrong: send 'Authorization: Bearer <DIGEST_API_TOKEN>'"
            if expected is not None
            else "the API is off: set DIGEST_API_TOKEN to turn it on",
            headers={"WWW-Authenticate": "Bearer"},
        )
