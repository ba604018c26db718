"""What every subscriber page shares: the templates, the page response, the subscriber a
link names, and the page for a link that does not work."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import TokenError
from digest.models import Subscriber, SubscriberStatus
from digest.subscribers import with_filters
from digest.web.deps import get_settings
from digest.web.pages.csrf import make_csrf

# The templates stay in digest/web/templates, beside the static files.
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parents[1] / "templates"))
ACTIVE, PENDING = SubscriberStatus.active, SubscriberStatus.pending
UNSUBSCRIBED, SUPPRESSED = SubscriberStatus.unsubscribed, SubscriberStatus.suppressed


def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    s = get_settings(request)
    context.setdefault("title", context.get("heading", "Email digest"))
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {"newsroom_name": s.newsroom_name, "static_url": "/static/style.css", **context},
        status_code=status_code,
    )


def load_subscriber(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.scalars(
        select(Subscriber).where(Subscriber.id == subscriber_id).options(*with_filters())
    ).one_or_none()
    if sub is None:
        raise TokenError("this link belongs to a subscription that no longer exists")
    return sub


def link_problem(
    request: Request,
    exc: TokenError | None,
    *,
    errors: list[str] | None = None,
    email: str = "",
    status_code: int = 400,
) -> HTMLResponse:
    """The page for a link that does not work, with a form to get a new one by email."""
    if exc is None:
        heading, reason = "Get a new link", ""
    elif "expired" in str(exc):
        heading, reason = "This link has expired", as_sentence(str(exc))
    else:
        heading, reason = "This link does not work", as_sentence(str(exc))
    return page(
        request,
        "link_problem.html",
        status_code,
        heading=heading,
        reason=reason,
        csrf=make_csrf(get_settings(request), "links"),
        errors=errors or [],
        email=email,
    )


def as_sentence(text: str) -> str:
    """An error's one line as a sentence on a page: capital first, full stop last."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
