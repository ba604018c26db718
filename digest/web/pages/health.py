"""The health check a load balancer or container runtime polls."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> Response:
    return Response("ok", media_type="text/plain")
