"""Subscribing: the form, the confirmation email, a new link by email, and the confirm link.

Nothing on these pages tells a visitor whether an address was already subscribed.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import taxonomy
from digest.errors import TokenError, ValidationError
from digest.models import Subscriber
from digest.subscribers import (
    WEEKDAYS,
    canonical_email,
    check_choice,
    check_hour,
    check_timezone,
    check_weekday,
    describe_filter,
    set_status,
    suppression_of,
    upsert_subscriber,
)
from digest.tokens import links_for, subscriber_from_token
from digest.web.deps import FormDep, SessionDep, get_settings
from digest.web.pages.common import (
    ACTIVE,
    PENDING,
    SUPPRESSED,
    UNSUBSCRIBED,
    as_sentence,
    link_problem,
    load_subscriber,
    page,
)
from digest.web.pages.csrf import check_csrf, make_csrf
from digest.web.pages.forms import PrefsForm, load_choices

router = APIRouter(include_in_schema=False)


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


def _schedule_text(sub: Subscriber) -> str:
    at = f"{sub.hour:02d}:00 ({sub.timezone})"
    if sub.frequency == "immediate":
        return "as soon as something is published"
    if sub.frequency == "daily":
        return f"every day at {at}"
    return f"every {WEEKDAYS[sub.weekday].capitalize()} at {at}"


def _send_confirmation(request: Request, subscriber_id: int) -> None:
    # Through the task queue when a broker is configured, in-process otherwise; the queue
    # (and its broker client) was made when the app started, never in a request's thread.
    request.app.state.queue.send_confirmation(subscriber_id)


def _validate_only(session: Session, prefs: PrefsForm) -> None:
    """The checks upsert_subscriber makes, without writing (for addresses we do not change)."""
    for spec in prefs.specs():
        facets: list[tuple[taxonomy.Facet, list[str]]] = [
            ("theme", spec.themes),
            ("location", spec.locations),
            ("content_type", spec.content_types),
        ]
        for facet, names in facets:
            taxonomy.resolve(session, facet, names, create=False)
    check_choice("frequency", prefs.frequency, ["immediate", "daily", "weekly"])
    check_choice("group_by", prefs.group_by, ["theme", "location"])
    check_timezone(prefs.timezone)
    check_weekday(prefs.weekday)
    check_hour(prefs.hour)


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
        return again([as_sentence(str(exc))], 403)
    try:
        address = canonical_email(prefs.email, smtputf8=s.smtputf8)
        existing = _by_address(session, address)
        if existing is not None:
            address = existing.email
        # Rule R2: nothing, not even a confirmation, goes to an address on the suppression
        # list; the page is the same, so it tells nobody the address is on it.
        listed = suppression_of(session, address) is not None
        sub: Subscriber | None
        if not listed and (existing is None or existing.status in (PENDING, UNSUBSCRIBED)):
            sub, _ = upsert_subscriber(
                session, address, smtputf8=s.smtputf8, filters=prefs.specs(), status=PENDING,
                **prefs.options()
            )
        else:
            _validate_only(session, prefs)
            sub = existing
    except ValidationError as exc:
        return again([as_sentence(str(exc))], 422)
    request.app.state.email_limiter.check(address)  # 429 past the limit; nothing is written
    sub_id = sub.id if sub is not None and not listed else None
    session.commit()
    if sub_id is not None:
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
    raw = form.get("email")
    email = raw.strip() if isinstance(raw, str) else ""
    try:
        check_csrf(s, form.get("csrf"), "links")
        address = canonical_email(email, smtputf8=s.smtputf8)
    except (TokenError, ValidationError) as exc:
        return link_problem(
            request, None, email=email, errors=[as_sentence(str(exc))], status_code=422
        )
    request.app.state.email_limiter.check(address)
    sub = _by_address(session, address)
    if sub is not None and suppression_of(session, sub.email) is None:  # rule R2
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
        sub = load_subscriber(session, subscriber_from_token("confirm", token, s))
    except TokenError as exc:
        return link_problem(request, exc)
    if sub.status == SUPPRESSED or suppression_of(session, sub.email) is not None:
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
