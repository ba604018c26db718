"""The preferences page (reached from the "manage" link): choices, a preview of what they
would bring, and subscribing again after unsubscribing."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from digest import selection
from digest.errors import TokenError, ValidationError
from digest.models import Item, Subscriber, utcnow
from digest.subscribers import set_status, upsert_subscriber
from digest.tokens import feed_url, subscriber_from_token, subscriber_token
from digest.web.deps import FormDep, SessionDep, get_settings
from digest.web.pages.common import (
    ACTIVE,
    UNSUBSCRIBED,
    as_sentence,
    link_problem,
    load_subscriber,
    page,
)
from digest.web.pages.csrf import check_csrf, make_csrf, subject_for
from digest.web.pages.forms import PrefsForm, load_choices

PREVIEW_DAYS = 28
PREVIEW_LIMIT = 30

router = APIRouter(include_in_schema=False)


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
        # The feed opens only while subscribed: no link to a 404 otherwise.
        feed_url=feed_url(sub.id, s) if sub.status == ACTIVE else None,
    )


SUPPRESSED_TEXT = ("Earlier emails to this address bounced or were refused, so it is on our "
                   "suppression list. Contact the newsroom to have it removed.")
SAVED_MESSAGES = {"1": "Your preferences are saved.", "resubscribed": "You are subscribed again."}


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences(request: Request, token: str, session: SessionDep, saved: str | None = None):
    try:
        subscriber_id = subscriber_from_token("manage", token, get_settings(request))
        sub = load_subscriber(session, subscriber_id)
    except TokenError as exc:
        return link_problem(request, exc)
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
        sub = load_subscriber(session, subscriber_from_token("manage", token, s))
    except TokenError as exc:
        return link_problem(request, exc)
    prefs = PrefsForm.from_form(form)
    try:
        check_csrf(s, form.get("csrf"), subject_for(sub.id))
    except TokenError as exc:
        return _preferences_page(request, session, sub, token, prefs, [as_sentence(str(exc))], 403)
    if form.get("action") == "resubscribe":
        # The link was emailed to this address: holding it is the confirmation.
        if sub.status == UNSUBSCRIBED:
            try:
                set_status(session, sub, ACTIVE)  # a fresh window (rule R6)
            except ValidationError:  # on the suppression list (rule R2)
                session.rollback()
                sub = load_subscriber(session, sub.id)
                return _preferences_page(request, session, sub, token, prefs, [SUPPRESSED_TEXT],
                                         409)
            session.commit()
        return RedirectResponse(f"/preferences/{token}?saved=resubscribed", status_code=303)
    try:
        upsert_subscriber(
            session, sub.email, smtputf8=s.smtputf8, filters=prefs.specs(), status=sub.status,
            **prefs.options()
        )
    except ValidationError as exc:
        session.rollback()
        sub = load_subscriber(session, sub.id)
        return _preferences_page(request, session, sub, token, prefs, [as_sentence(str(exc))], 422)
    session.commit()
    return RedirectResponse(f"/preferences/{token}?saved=1", status_code=303)
