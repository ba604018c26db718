"""Ad-hoc runs (a dry run comes with its forecast), every run's progress counts and a running
run's ETA, a run's forecast, and the resend of a finished run's failed deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from digest import delivery, selection
from digest.delivery.forecast import Eta, Forecast, forecast_run
from digest.delivery.periodic import queue_for
from digest.delivery.progress import list_runs as progress_runs
from digest.delivery.progress import runs_eta
from digest.models import DigestRun, RunStatus
from digest.selection.resend import plan_resend_failed
from digest.web.api.schemas import MAX_PAGE, EtaOut, ForecastOut, IdPath, RunIn, RunOut
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
        also_in_digests=body.also_in_digests,
    )
    query.check()
    planned = selection.plan_adhoc_run(session, query, dry_run=body.dry_run, slot_key=body.slot_key)
    session.commit()
    if planned.created and not body.dry_run:
        queue_for(settings).deliver(planned.pending_ids)
    response.status_code = 201 if planned.created else 200
    run = session.get_one(DigestRun, planned.run_id)
    session.refresh(run)
    forecast = _forecast_out(forecast_run(session, run.id, settings)) if run.dry_run else None
    return RunOut.of(run, delivery.run_progress(session, run.id), created=planned.created,
                     forecast=forecast)


def _forecast_out(forecast: Forecast) -> ForecastOut:
    return ForecastOut.model_validate(forecast.as_dict() | {"summary": forecast.lines()})


def _eta_out(eta: Eta) -> EtaOut:
    return EtaOut(done=eta.done, messages=eta.messages, sent=eta.sent, rate=eta.rate,
                  seconds_left=eta.seconds_left, rate_source=eta.rate_source or None,
                  stalled=eta.stalled,
                  waiting=eta.waiting.describe() if eta.waiting is not None else None,
                  summary=eta.describe())


def _out(session, runs: list[DigestRun], settings) -> list[RunOut]:
    progress = delivery.runs_progress(session, [r.id for r in runs])
    running = {r.id: progress[r.id] for r in runs if r.status in _RUNNING}
    etas = runs_eta(session, running, settings=settings)
    return [RunOut.of(r, progress[r.id], eta=_eta_out(etas[r.id]) if r.id in etas else None)
            for r in runs]


_RUNNING = (RunStatus.sending, RunStatus.planning)
EMPTY_HIDDEN_HEADER = "X-Empty-Runs-Hidden"


@router.get("/runs", response_model=list[RunOut], tags=["runs"])
def list_runs(response: Response, session: SessionDep, settings: SettingsDep,
              limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
              include_empty: bool = False):
    """The newest runs. Runs that came to nothing (finished with no message and no empty
    digest: the hourly slots nobody was due in) are left out unless ``include_empty``; the
    ``X-Empty-Runs-Hidden`` header says how many fell among those listed."""
    listed = progress_runs(session, limit=limit, include_empty=include_empty)
    response.headers[EMPTY_HIDDEN_HEADER] = str(listed.empty_hidden)
    return _out(session, listed.runs, settings)


@router.get(
    "/runs/{run_id}",
    response_model=RunOut,
    tags=["runs"],
    responses={404: {"description": "No such run"}},
)
def get_run(run_id: IdPath, session: SessionDep, settings: SettingsDep):
    run = session.get(DigestRun, run_id)
    if run is None:
        raise HTTPException(404, f"no run with id {run_id}")
    return _out(session, [run], settings)[0]


@router.get(
    "/runs/{run_id}/forecast",
    response_model=ForecastOut,
    tags=["runs"],
    responses={404: {"description": "No such run"}},
)
def get_forecast(run_id: IdPath, session: SessionDep, settings: SettingsDep):
    """What the run sends (a dry run: would send), the messages' average size, and how long
    that takes at DIGEST_SEND_RATE and at the throughput measured lately (``estimate_basis``
    says which rate the estimate used); for a finished run, ``outcome``: what it came to."""
    if session.get(DigestRun, run_id) is None:
        raise HTTPException(404, f"no run with id {run_id}")
    return _forecast_out(forecast_run(session, run_id, settings))


@router.post(
    "/runs/{run_id}/resend-failed",
    response_model=RunOut,
    tags=["runs"],
    responses={201: {"description": "The resend was planned", "model": RunOut},
               200: {"description": "This run was resent already: that resend, nothing new"},
               404: {"description": "No such run"},
               422: {"description": "The run is a dry run or not finished"}},
)
def resend_failed(run_id: IdPath, response: Response, session: SessionDep,
                  settings: SettingsDep):
    """A finished run's failed deliveries once more, as a new run with the same items, to
    the readers still subscribed and not suppressed. Twice: the first resend, nothing new."""
    if session.get(DigestRun, run_id) is None:
        raise HTTPException(404, f"no run with id {run_id}")
    planned = plan_resend_failed(session, run_id)
    session.commit()
    if planned.created:
        queue_for(settings).deliver(planned.pending_ids)
    response.status_code = 201 if planned.created else 200
    run = session.get_one(DigestRun, planned.run_id)
    session.refresh(run)
    return RunOut.of(run, delivery.run_progress(session, run.id), created=planned.created)
