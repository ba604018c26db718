"""Subscribers over the API: CRUD with their filters, CSV import and export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.errors import ValidationError
from digest.models import Item, Subscriber, SubscriberStatus
from digest.selection.explain import Explanation, explain
from digest.subscribers import (
    FilterSpec,
    canonical_email,
    erase_subscriber,
    export_csv,
    import_csv,
    upsert_subscriber,
    with_filters,
)
from digest.web.api.schemas import (
    MAX_ID,
    MAX_PAGE,
    FilterModel,
    IdPath,
    ImportLineError,
    ImportResult,
    SubscriberIn,
    SubscriberOut,
    SubscriberPage,
    SubscriberPatch,
    When,
    no_nul_query,
)
from digest.web.deps import SessionDep, SettingsDep

MAX_CSV_BYTES = 5 * 1024 * 1024

router = APIRouter()


def _specs(filters: list[FilterModel]) -> list[FilterSpec]:
    return [FilterSpec(list(f.themes), list(f.locations), list(f.content_types)) for f in filters]


def _load(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.scalars(
        select(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .options(
            *with_filters()
        )
        .execution_options(populate_existing=True)
    ).one_or_none()
    if sub is None:
        raise HTTPException(404, f"no subscriber with id {subscriber_id}")
    return sub


@router.get("/subscribers", response_model=SubscriberPage, tags=["subscribers"])
def list_subscribers(
    session: SessionDep,
    status: SubscriberStatus | None = None,
    email: Annotated[str | None, Query(max_length=320, description="Part of the address")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
):
    conds = []
    if status is not None:
        conds.append(Subscriber.status == status.value)
    if email:
        conds.append(Subscriber.email.contains(no_nul_query(email).lower(), autoescape=True))
    total = session.scalar(select(func.count()).select_from(Subscriber).where(*conds)) or 0
    subs = session.scalars(
        select(Subscriber)
        .where(*conds)
        .order_by(Subscriber.id)
        .limit(limit)
        .offset(offset)
        .options(
            *with_filters()
        )
    )
    return SubscriberPage(total=total, items=[SubscriberOut.of(s) for s in subs])


@router.post(
    "/subscribers",
    response_model=SubscriberOut,
    status_code=201,
    tags=["subscribers"],
    responses={409: {"description": "A subscriber with this address exists"}},
)
def create_subscriber(body: SubscriberIn, session: SessionDep, settings: SettingsDep):
    address = canonical_email(body.email, smtputf8=settings.smtputf8)
    existing = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
    if existing is not None:
        _exists(existing)
    sub, created = upsert_subscriber(
        session,
        address,
        smtputf8=settings.smtputf8,
        filters=_specs(body.filters),
        frequency=body.frequency.value,
        timezone=body.timezone,
        weekday=body.weekday,
        hour=body.hour,
        status=body.status.value,
        group_by=body.group_by,
        suppression_detail="suppressed over the API",
    )
    if not created:
        # Created by another request between our look-up and our write: still a 409.
        sub_id = sub.id
        session.rollback()
        _exists(sub_id)
    session.commit()
    return SubscriberOut.of(_load(session, sub.id))


def _exists(subscriber_id: int) -> None:
    raise HTTPException(
        409,
        f"a subscriber with this address exists (id {subscriber_id}); "
        f"change it with PATCH /api/v1/subscribers/{subscriber_id}",
    )


@router.get(
    "/subscribers/export",
    tags=["subscribers"],
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "Every subscriber, one row per filter",
        }
    },
)
def export_subscribers(session: SessionDep) -> Response:
    return Response(
        export_csv(session),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


@router.post(
    "/subscribers/import",
    response_model=ImportResult,
    tags=["subscribers"],
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
    description="CSV with a header row (email, frequency, timezone, weekday, hour, themes, "
    "locations, content_types, status; values in a cell separated by '|'). Good rows "
    "are imported, bad rows reported with their line number in `errors`. An existing "
    "subscriber changes only in the cells a row fills; filter columns replace their "
    "filters. Lines that would re-subscribe someone who unsubscribed or was suppressed, or "
    "an address on the suppression list, are left alone and reported in `skipped`. Safe to "
    "run twice.",
)
async def import_subscribers(request: Request, session: SessionDep, settings: SettingsDep):
    raw = await request.body()
    if len(raw) > MAX_CSV_BYTES:
        raise HTTPException(413, f"CSV larger than {MAX_CSV_BYTES // (1024 * 1024)} MB; split it")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError(
            "the CSV is not UTF-8 text; save it as UTF-8 and send it again"
        ) from None
    if "\x00" in text:
        raise ValidationError("the CSV contains NUL characters; is it really a CSV file?")
    from starlette.concurrency import run_in_threadpool

    def work() -> ImportResult:
        report = import_csv(session, text, smtputf8=settings.smtputf8)
        session.commit()
        return ImportResult(
            added=report.added,
            updated=report.updated,
            errors=[ImportLineError(line=ln, reason=r) for ln, r in report.errors],
            skipped=[ImportLineError(line=ln, reason=r) for ln, r in report.skipped],
        )

    return await run_in_threadpool(work)


@router.get(
    "/subscribers/{subscriber_id}",
    response_model=SubscriberOut,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber"}},
)
def get_subscriber(subscriber_id: IdPath, session: SessionDep):
    return SubscriberOut.of(_load(session, subscriber_id))


@router.get(
    "/subscribers/{subscriber_id}/explain/{item_id}",
    response_model=Explanation,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber or item"}},
)
def explain_item(subscriber_id: IdPath, item_id: IdPath, session: SessionDep,
                 settings: SettingsDep, as_of: When | None = None):
    """Why the item did or did not reach the reader: the verdict, each filter's facets, the
    window, backfill, the reader's claim, the delivery that carried it (status, SMTP reply, note),
    suppression, status and a paused domain; ``sentences`` says it in words."""
    sub = _load(session, subscriber_id)
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return explain(session, sub, item, settings=settings, as_of=as_of)


@router.patch(
    "/subscribers/{subscriber_id}",
    response_model=SubscriberOut,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber"}},
)
def update_subscriber(subscriber_id: IdPath, body: SubscriberPatch, session: SessionDep,
                      settings: SettingsDep):
    sub = _load(session, subscriber_id)
    # A field left out keeps its value; a status given is the operator's explicit choice for
    # this reader (rule R5): anything but "suppressed" lifts a suppression of the address.
    upsert_subscriber(
        session,
        sub.email,
        smtputf8=settings.smtputf8,
        filters=_specs(body.filters) if body.filters is not None else None,
        frequency=body.frequency.value if body.frequency else None,
        timezone=body.timezone,
        weekday=body.weekday,
        hour=body.hour,
        status=body.status.value if body.status else None,
        group_by=body.group_by,
        suppression_detail="suppressed over the API",
        lift_suppression=body.status is not None,
    )
    session.commit()
    return SubscriberOut.of(_load(session, subscriber_id))


@router.delete(
    "/subscribers/{subscriber_id}",
    status_code=204,
    tags=["subscribers"],
    responses={404: {"description": "No such subscriber"}},
)
def delete_subscriber(subscriber_id: IdPath, session: SessionDep) -> Response:
    """Erase the subscriber, their filters, their delivery log and the bounces about them
    (a suppression of the address is kept, so it is never mailed again)."""
    sub = _load(session, subscriber_id)
    erase_subscriber(session, sub)
    session.commit()
    return Response(status_code=204)
