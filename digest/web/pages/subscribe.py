"""Subscriber pages: subscribe, confirm, preferences, unsubscribe, view in browser.

Subscribers never log in: every page after /subscribe is reached from a signed link in an
email, and the link's purpose is checked (a confirm link cannot unsubscribe). The pages
work without JavaScript. Nothing on them tells a visitor whether an address was already
subscribed.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from digest import delivery, taxonomy
from digest.queue import queue_for
from digest import select as selection
from digest.errors import TokenError, ValidationError
from digest.models import (
    Item,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from digest.subscribers import (
    WEEKDAYS,
    check_choice,
    check_hour,
    check_timezone,
    check_weekday,
    describe_filter,
    set_status,
    unsubscribe,
    upsert_subscriber,
    with_filters,
)
from digest.subscribers import canonical_email as normalise_address
from digest.tokens import links_for, read_token, subscriber_from_token, subscriber_token
from digest.web.pages.csrf import check_csrf, make_csrf, subject_for
from digest.web.deps import FormDep, SessionDep, get_settings
from digest.web.pages.forms import PrefsForm, load_choices

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parents[1] / "templates"))
PREVIEW_DAYS = 28
PREVIEW_LIMIT = 30
ACTIVE, PENDING = SubscriberStatus.active.value, SubscriberStatus.pending.value
UNSUBSCRIBED, SUPPRESSED = SubscriberStatus.unsubscribed.value, SubscriberStatus.suppressed.value

router = APIRouter(include_in_schema=False)


def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    s = get_settings(request)
    context.setdefault("title", context.get("heading", "Email digest"))
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {"newsroom_name": s.newsroom_name, "static_url": "/static/style.css", **context},
        status_code=status_code,
    )


def _load(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.scalars(
        select(Subscriber).where(Subscriber.id == subscriber_id).options(*with_filters())
    ).one_or_none()
    if sub is None:
        raise TokenError("this link belongs to a subscription that no longer exists")
    return sub


def _by_address(session: Session, address: str) -> Subscriber | None:
    """The subscriber with this address, whatever capitals either was typed with: people
    do not expect "Ann@" and "ann@" to be two subscriptions."""
    exact = session.scalars(select(Subscriber).where(Subscriber.email == address)).one_or_none()
    if exact is not None:
        return exact
    return session.scalars(
        select(Subscriber)
        .where(func.lower(Subscriber.email) == address.lower())
        .order_by(Subscriber.id)
    ).first()


def _link_problem(
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
        heading, reason = "This link has expired", _message(str(exc))
    else:
        heading, reason = "This link does not work", _message(str(exc))
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


def _schedule_text(sub: Subscriber) -> str:
    at = f"{sub.hour:02d}:00 ({sub.timezone})"
    if sub.frequency == "immediate":
        return "as soon as something is published"
    if sub.frequency == "daily":
        return f"every day at {at}"
    return f"every {WEEKDAYS[sub.weekday].capitalize()} at {at}"


def _send_confirmation(request: Request, subscriber_id: int) -> None:
    # Through the task queue when a broker is configured; in-process otherwise.
    queue_for(request.app.state.settings).send_confirmation(subscriber_id)


def _validate_only(session: Session, prefs: PrefsForm) -> None:
    """The checks upsert_subscriber makes, without writing (for addresses we do not change)."""
    for spec in prefs.specs():
        for facet, names in (
            ("theme", spec.themes),
            ("location", spec.locations),
            ("content_type", spec.content_types),
        ):
            taxonomy.resolve(session, facet, names, create=False)
    check_choice("frequency", prefs.frequency, ["immediate", "daily", "weekly"])
    check_choice("group_by", prefs.group_by, ["theme", "location"])
    check_timezone(prefs.timezone)
    check_weekday(prefs.weekday)
    check_hour(prefs.hour)


def _message(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


# --- subscribe --------------------------------------------------------------------------------


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/subscribe", status_code=303)


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_form(request: Request, session: SessionDep):
    s = get_settings(request)
    return page(
        request,
        "subscribe.html",
        title="Subscribe",
        prefs=PrefsForm(mode="everything"),
        choices=load_choices(session),
        csrf=make_csrf(s, "subscribe"),
        errors=[],
    )


@router.post("/subscribe", response_class=HTMLResponse)
def subscribe_submit(request: Request, form: FormDep, session: SessionDep):
    """New or unconfirmed addresses are (re)written as pending; the address of an active
    or suppressed subscriber is left as it is. Every case shows the same page."""
    s = get_settings(request)
    prefs = PrefsForm.from_form(form)

    def again(errors: list[str], status_code: int) -> HTMLResponse:
        session.rollback()
        return page(
            request,
            "subscribe.html",
            status_code,
            title="Subscribe",
            prefs=prefs,
            choices=load_choices(session),
            csrf=make_csrf(s, "subscribe"),
            errors=errors,
        )

    try:
        check_csrf(s, form.get("csrf"), "subscribe")
    except TokenError as exc:
        return again([_message(str(exc))], 403)
    try:
        address = normalise_address(prefs.email)
        existing = _by_address(session, address)
        if existing is not None:
            address = existing.email
        if existing is None or existing.status in (PENDING, UNSUBSCRIBED):
            sub, _ = upsert_subscriber(
                session, address, filters=prefs.specs(), status=PENDING, **prefs.options()
            )
        else:
            _validate_only(session, prefs)
            sub = existing
    except ValidationError as exc:
        return again([_message(str(exc))], 422)
    request.app.state.email_limiter.check(address)  # 429 past the limit; nothing is written
    sub_id = sub.id
    session.commit()
    _send_confirmation(request, sub_id)
    return page(
        request,
        "check_inbox.html",
        title="Check your inbox",
        email=address,
        detail="Open the link in it to confirm your subscription.",
    )


@router.post("/links", response_class=HTMLResponse)
def send_new_link(request: Request, form: FormDep, session: SessionDep):
    """From an expired or broken link: email a fresh confirmation link, if we know the address."""
    s = get_settings(request)
    email = (form.get("email") or "").strip() if isinstance(form.get("email"), str) else ""
    try:
        check_csrf(s, form.get("csrf"), "links")
        address = normalise_address(email)
    except (TokenError, ValidationError) as exc:
        return _link_problem(
            request, None, email=email, errors=[_message(str(exc))], status_code=422
        )
    request.app.state.email_limiter.check(address)
    sub = _by_address(session, address)
    if sub is not None:
        _send_confirmation(request, sub.id)
    return page(
        request,
        "check_inbox.html",
        title="Check your inbox",
        email=address,
        detail="Open the link in it to confirm your address and manage your subscription.",
    )


# --- confirm ----------------------------------------------------------------------------------


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm(request: Request, token: str, session: SessionDep):
    s = get_settings(request)
    try:
        sub = _load(session, subscriber_from_token("confirm", token, s))
    except TokenError as exc:
        return _link_problem(request, exc)
    if sub.status == SUPPRESSED:
        return page(
            request,
            "message.html",
            409,
            heading="We cannot send to this address",
            message="Earlier emails to this address bounced or were refused, so it is on "
            "our suppression list. Contact the newsroom to have it removed.",
        )
    if sub.status != ACTIVE:
        set_status(session, sub, ACTIVE)
        session.commit()
    return page(
        request,
        "confirmed.html",
        title="Subscription confirmed",
        email=sub.email,
        schedule_text=_schedule_text(sub),
        filters=[describe_filter(f) for f in sub.filters],
        manage_url=links_for(sub.id, s)["manage_url"],
    )


# --- preferences ------------------------------------------------------------------------------


def _preview(session: Session, subscriber_id: int) -> tuple[list[dict], int]:
    items = selection.matching_items(
        session, subscriber_id, since=utcnow() - timedelta(days=PREVIEW_DAYS)
    )
    shown_ids = [i.id for i in items[:PREVIEW_LIMIT]]
    loaded = {
        i.id: i
        for i in session.scalars(
            select(Item)
            .where(Item.id.in_(shown_ids))
            .options(selectinload(Item.locations), selectinload(Item.content_type))
        )
    }
    rows = []
    for item_id in shown_ids:
        item = loaded[item_id]
        when = item.published_at or item.ingested_at
        meta = " · ".join(
            p
            for p in (
                f"{when.day} {when:%B %Y}",
                item.content_type.name if item.content_type else "",
                ", ".join(loc.name for loc in item.locations),
            )
            if p
        )
        url = item.url if item.url and item.url.startswith(("https://", "http://")) else None
        rows.append({"title": item.title, "url": url, "meta": meta})
    return rows, len(items)


def _preferences_page(
    request: Request,
    session: Session,
    sub: Subscriber,
    token: str,
    prefs: PrefsForm,
    errors: list[str],
    status_code: int = 200,
    saved: str | None = None,
) -> HTMLResponse:
    s = get_settings(request)
    preview, total = _preview(session, sub.id)
    return page(
        request,
        "preferences.html",
        status_code,
        title="Your preferences",
        email=sub.email,
        status=sub.status,
        prefs=prefs,
        choices=load_choices(session),
        errors=errors,
        csrf=make_csrf(s, subject_for(sub.id)),
        form_url=f"/preferences/{token}",
        unsubscribe_url=f"/unsubscribe/{subscriber_token('unsubscribe', sub.id, s)}",
        preview=preview,
        preview_total=total,
        saved=saved,
    )


SAVED_MESSAGES = {"1": "Your preferences are saved.", "resubscribed": "You are subscribed again."}


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences(request: Request, token: str, session: SessionDep, saved: str | None = None):
    try:
        sub = _load(session, subscriber_from_token("manage", token, get_settings(request)))
    except TokenError as exc:
        return _link_problem(request, exc)
    return _preferences_page(
        request,
        session,
        sub,
        token,
        PrefsForm.from_subscriber(sub),
        [],
        saved=SAVED_MESSAGES.get(saved or ""),
    )


@router.post("/preferences/{token}", response_class=HTMLResponse)
def preferences_submit(request: Request, token: str, form: FormDep, session: SessionDep):
    s = get_settings(request)
    try:
        sub = _load(session, subscriber_from_token("manage", token, s))
    except TokenError as exc:
        return _link_problem(request, exc)
    prefs = PrefsForm.from_form(form)
    try:
        check_csrf(s, form.get("csrf"), subject_for(sub.id))
    except TokenError as exc:
        return _preferences_page(request, session, sub, token, prefs, [_message(str(exc))], 403)
    if form.get("action") == "resubscribe":
        # The link was emailed to this address: holding it is the confirmation.
        if sub.status == UNSUBSCRIBED:
            set_status(session, sub, ACTIVE)
            session.commit()
        return RedirectResponse(f"/preferences/{token}?saved=resubscribed", status_code=303)
    try:
        upsert_subscriber(
            session, sub.email, filters=prefs.specs(), status=sub.status, **prefs.options()
        )
    except ValidationError as exc:
        session.rollback()
        sub = _load(session, sub.id)
        return _preferences_page(request, session, sub, token, prefs, [_message(str(exc))], 422)
    session.commit()
    return RedirectResponse(f"/preferences/{token}?saved=1", status_code=303)


# --- unsubscribe ------------------------------------------------------------------------------


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str, session: SessionDep):
    """Only a page with a button: mail scanners open links, and must not unsubscribe anyone."""
    s = get_settings(request)
    try:
        sub = _load(session, subscriber_from_token("unsubscribe", token, s))
    except TokenError as exc:
        return _link_problem(request, exc)
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
        sub = _load(session, subscriber_from_token("unsubscribe", token, s))
    except TokenError as exc:
        return _link_problem(request, exc)
    if sub.status not in (UNSUBSCRIBED, SUPPRESSED):
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
        return _link_problem(request, exc)
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


@router.get("/healthz")
def healthz() -> Response:
    return Response("ok", media_type="text/plain")
