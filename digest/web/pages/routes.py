"""The router of every subscriber page (none of them is in the OpenAPI document)."""

from __future__ import annotations

from fastapi import APIRouter

from digest.web.pages import feed, health, links, preferences, subscribe

router = APIRouter(include_in_schema=False)
for pages in (subscribe, preferences, links, feed, health):
    router.include_router(pages.router)
