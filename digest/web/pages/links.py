"""The pages behind the links in every email: unsubscribe (the button and RFC 8058
one-click) and "view in browser"."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from digest import delivery
from digest.errors import TokenError
from digest.subscribers import unsubscribe
from digest.tokens import links_for, read_token, subscriber_from_token
from digest.web.deps import SessionDep, get_settings
from digest.web.pages.common import UNSUBSCRIBED, link_problem, load_subscriber, page

router = APIRouter(include_in_schema=False)


# --- unsubscribe ------------------------------------------------------------------------------


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str, session: SessionDep):
    """Only a page with a button: mail scanners open links, and must not unsubscribe anyone."""
    s = get_settings(request)
    try:
        sub = load_subscriber(session, subscriber_from_token("unsubscribe", token, s))
    except TokenError as exc:
        return link_problem(request, exc)
    return page(
        request,
        "unsubscribe.html",
        title="Unsubscribe",
        email=sub.email,
        status=sub.status,
        form_url=f"/unsubscribe/{token}",
        manage_url=links_for(sub.id, s)["manage_url"],
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_now(request: Request, token: str, session: SessionDep):
    """The button and RFC 8058 one-click (``List-Unsubscribe=One-Click``) alike: unsubscribe
    at once and answer 200 without a redirect. No CSRF token: the signed link is the proof,
    and mail providers post without cookies or form tokens. Planned, unsent deliveries are
    cancelled in the same transaction."""
    s = get_settings(request)
    try:
        sub = load_subscriber(session, subscriber_from_token("unsubscribe", token, s))
    except TokenError as exc:
        return link_problem(request, exc)
    if sub.status != UNSUBSCRIBED:
        # A suppressed reader stays suppressed, and is given back as unsubscribed if the
        # suppression is ever lifted (rule R5).
        unsubscribe(session, sub)
        session.commit()
    return page(
        request,
        "unsubscribed.html",
        title="Unsubscribed",
        email=sub.email,
        manage_url=links_for(sub.id, s)["manage_url"],
    )


# --- view in browser --------------------------------------------------------------------------


@router.get("/view/{token}", response_class=HTMLResponse)
def view_in_browser(request: Request, token: str, session: SessionDep):
    s = get_settings(request)
    try:
        delivery_id = read_token("view", token, s).get("d")
        if not isinstance(delivery_id, int):
            raise TokenError("this link is not valid")
    except TokenError as exc:
        return link_problem(request, exc)
    html = delivery.render_for_browser(session, delivery_id, s)
    if html is None:
        return page(
            request,
            "message.html",
            404,
            heading="Nothing to show",
            message="This email is no longer available, or it had no items.",
        )
    return HTMLResponse(html)
