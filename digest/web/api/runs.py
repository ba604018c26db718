"""Ad-hoc runs (dry run supported) and every run's progress counts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import select

from digest import delivery, selection
from digest.models import DigestRun
from digest.queue import queue_for
from digest.web.api.schemas import MAX_PAGE, IdPath, RunIn, RunOut
from digest.web.deps import SessionDep, SettingsDep

router = APIRouter()


@router.post(
    "/runs",
    response_model=RunOut,
    tags=["runs"],
    responses={201: {"description": "A new run was planned", "model": RunOut}},
)
def create_run(body: RunIn, response: Response, session: SessionDep, settings: SettingsDep):
    query = selection.AdhocQuery(
        themes=tuple(body.themes),
        locations=tuple(body.locations),
        content_types=tuple(body.content_types),
        published_from=body.published_from,
        published_to=body.published_to,
        item_ids=tuple(body.item_ids),
        frequencies=tuple(f.value for f in body.frequencies),
    )
    query.check()
    planned = selection.plan_adhoc_run(session, query, dry_run=body.dry_run, slot_key=body.slot_key)
    session.commit()
    if planned.created and not body.dry_run:
        queue_for(settings).deliver(planned.pending_ids)
    response.status_code = 201 if planned.created else 200
    run = session.get_one(DigestRun, planned.run_id)
    session.refresh(run)
    return RunOut.of(run, delivery.run_progress(session, run.id), created=planned.created)


@router.get("/runs", response_model=list[RunOut], tags=["runs"])
def list_runs(session: SessionDep, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50):
    runs = session.scalars(select(DigestRun).order_by(DigestRun.id.desc()).limit(limit)).all()
    progress = delivery.runs_progress(session, [r.id for r in runs])
    return [RunOut.of(r, progress[r.id]) for r in runs]


@router.get(
    "/runs/{run_id}",
    response_model=RunOut,
    tags=["runs"],
    responses={404: {"description": "No such run"}},
)
def get_run(run_id: IdPath, session: SessionDep):
    run = session.get(DigestRun, run_id)
    if run is None:
        raise HTTPException(404, f"no run with id {run_id}")
    return RunOut.of(run, delivery.run_progress(session, run_id))
