"""The delivery log, and the message a delivery carries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func, select

from digest import delivery
from digest.models import Delivery, DeliveryStatus
from digest.web.api.schemas import (
    MAX_ID,
    MAX_PAGE,
    DeliveryMessage,
    DeliveryOut,
    DeliveryPage,
    IdPath,
    When,
)
from digest.web.deps import SessionDep, SettingsDep

router = APIRouter()


@router.get("/deliveries", response_model=DeliveryPage, tags=["deliveries"])
def list_deliveries(
    session: SessionDep,
    run_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    subscriber_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: DeliveryStatus | None = None,
    since: Annotated[When | None, Query(description="Planned at or after (ISO 8601)")] = None,
    until: Annotated[When | None, Query(description="Planned before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
):
    conds = []
    if run_id is not None:
        conds.append(Delivery.run_id == run_id)
    if subscriber_id is not None:
        conds.append(Delivery.subscriber_id == subscriber_id)
    if status is not None:
        conds.append(Delivery.status == status.value)
    if since is not None:
        conds.append(Delivery.created_at >= since)
    if until is not None:
        conds.append(Delivery.created_at < until)
    total = session.scalar(select(func.count()).select_from(Delivery).where(*conds)) or 0
    rows = session.scalars(
        select(Delivery).where(*conds).order_by(Delivery.id).limit(limit).offset(offset)
    )
    return DeliveryPage(total=total, items=[DeliveryOut.model_validate(d) for d in rows])


@router.get(
    "/deliveries/{delivery_id}/message",
    response_model=DeliveryMessage,
    tags=["deliveries"],
    responses={404: {"description": "No such delivery, or it carries nothing (skipped)"}},
)
def delivery_message(delivery_id: IdPath, session: SessionDep, settings: SettingsDep):
    """The message of a delivery as it is (or would be) mailed: subject, HTML and text.

    For a dry run's deliveries this is the preview of an ad-hoc send before it is made.
    """
    row = session.get(Delivery, delivery_id)
    rendered = delivery.render_delivery(session, delivery_id, settings=settings) if row else None
    if row is None or rendered is None:
        raise HTTPException(404, f"no delivery with id {delivery_id} that carries items")
    return DeliveryMessage(delivery_id=row.id, run_id=row.run_id, email=row.email,
                           status=row.status, item_count=row.item_count,
                           subject=rendered.subject, html=rendered.html, text=rendered.text)
