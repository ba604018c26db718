"""The web application: subscriber pages, the admin UI and the JSON API in one FastAPI app.

``create_app(settings)`` builds a fresh app (tests build one per database); ``digest web``
serves ``create_app()`` with uvicorn.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError

from digest.delivery.periodic import queue_for
from digest.errors import DeliveryError, DigestError
from digest.logs import configure_logging
from digest.settings import Settings, check_secrets, get_settings
from digest.web import admin, api, metrics, pages, providers, websub
from digest.web.errors import (
    CONFLICT_DETAIL,
    conflict_problem,
    headers_for,
    problem,
    status_for,
)
from digest.web.ratelimit import EmailRateLimiter

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"

# Pages are plain HTML with one stylesheet; tokens in their URLs must not leak as Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# "View in browser" shows the email's own HTML: inline styles, images from anywhere.
VIEW_HEADERS = PAGE_HEADERS | {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src https: data:; frame-ancestors 'none'; base-uri 'none'",
}
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}

HEADINGS = {429: "Please wait a little", 503: "We could not send the email just now"}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Without ``settings`` (how uvicorn's factory calls it) the environment's settings, and
    a known or short secret key outside the built-in SQLite file is refused (ConfigError);
    tests and the demo pass their own settings."""
    if settings is None:  # the edge: the environment's settings, read once
        settings = get_settings()
        check_secrets(settings)
        configure_logging(settings.log_format, settings.log_level)
    s = settings
    app = FastAPI(
        title=f"{s.newsroom_name} digest API",
        version="1",
        description="Subscribers, items, ad-hoc sends and the delivery log. Every call needs "
        "`Authorization: Bearer <DIGEST_API_TOKEN>`.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = s
    app.state.email_limiter = EmailRateLimiter(s)
    # The task queue, with its broker client ready to send, before the first request: made
    # by the first requests' threads at once, Celery's lazy imports raced into 500s.
    app.state.queue = queue_for(s)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(providers.router)  # /webhooks/<provider> (digest.web.providers)
    app.state.metrics_registry = metrics.build_registry(s)
    app.include_router(metrics.router)  # /metrics, Prometheus text (digest.web.metrics)
    app.include_router(websub.router)  # /websub/<token>, a hub's callback (digest.web.websub)
    websub.add_metrics(app)
    admin.mount_admin(app, s)

    @app.exception_handler(DigestError)
    async def digest_error(request: Request, exc: DigestError):
        status, headers = status_for(exc), headers_for(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse(problem(exc), status_code=status, headers=headers)
        if isinstance(exc, DeliveryError):
            # The SMTP server's words are for the operator's log, not for the visitor.
            log.warning("sending failed on %s: %s", request.url.path, exc)
            message = "Please try again in a few minutes."
        else:
            message = pages.as_sentence(str(exc))
        response = pages.page(
            request,
            "message.html",
            status,
            heading=HEADINGS.get(status, "Something is not right"),
            message=message,
        )
        response.headers.update(headers)
        return response

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError):
        log.warning("write refused by a constraint on %s: %s", request.url.path, exc.orig)
        if request.url.path.startswith("/api/"):
            return JSONResponse(conflict_problem(), status_code=409)
        return pages.page(request, "message.html", 409, heading="Please try again",
                          message=pages.as_sentence(CONFLICT_DETAIL))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        path = request.url.path
        if path.startswith("/view/"):
            extra = VIEW_HEADERS
        elif path.startswith(("/api/", "/docs", "/openapi.json", "/admin", "/static/",
                              "/metrics", "/webhooks/")):
            extra = COMMON_HEADERS
        else:
            extra = PAGE_HEADERS
        for name, value in extra.items():
            response.headers.setdefault(name, value)
        return response

    return app

