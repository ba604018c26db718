"""The /api/v1 router: the token check and the answers every route documents, then each
resource's routes (their order is the order of the OpenAPI document)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from digest.web.api import bounces, deliveries, items, runs, sources, subscribers, taxonomy
from digest.web.api.auth import require_token

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_token)],
    responses={
        401: {"description": "Missing or wrong bearer token"},
        422: {"description": "Invalid input; the detail says which value"},
    },
)
for resource in (subscribers, taxonomy, items, runs, deliveries, bounces):
    router.include_router(resource.router)
router.include_router(sources.router)
