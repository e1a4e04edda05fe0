"""Monitoring and feedback routes: the served model's drift, and clinicians' verdicts.

- ``GET /v1/models/{name}/monitoring`` (clinician): the drift status of the served
  version, overall and per site, each feature's PSI and two-sample p-value against the
  training reference, the input histogram, and the running agreement of the feedback.
- ``POST /v1/predictions/{id}/feedback`` (clinician): agree or disagree with each
  finding of a prediction, with an optional final diagnosis code; stored pseudonymously
  and audited. Only the prediction's caller (or an admin) may give it, as only they may
  read the prediction; it is accepted after the prediction left memory.

This router imports nothing of :mod:`medai.serving.inference` (the routers stay
independent): the service and the monitor are read from ``app.state``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from starlette.concurrency import run_in_threadpool

from medai.errors import ModelUnavailable
from medai.serving.deps import ClinicianDep, EngineDep
from medai.serving.keys import role_grants
from medai.serving.monitoring.feedback import Verdict, record_feedback, served_prediction
from medai.serving.monitoring.monitor import DriftMonitor
from medai.serving.monitoring.schemas import FeedbackIn, FeedbackOut, MonitoringOut

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["monitoring"])


def _monitor(request: Request) -> DriftMonitor:
    monitor: DriftMonitor | None = getattr(request.app.state, "monitor", None)
    if monitor is None:
        raise ModelUnavailable("this service serves no model: set MEDAI_SERVE_MODEL and restart")
    return monitor


@router.get(
    "/models/{name}/monitoring",
    summary="Drift of the served model's inputs and scores, and the feedback agreement",
    response_model=MonitoringOut,
    responses={
        404: {"description": "This service does not serve that model"},
        503: {"description": "No model served or loaded yet"},
    },
)
async def monitoring(
    request: Request,
    caller: ClinicianDep,
    name: Annotated[str, Path(max_length=128, description="The served model's name")],
) -> MonitoringOut:
    """The status (``unknown``, ``ok``, ``warn``, ``drift``) of the last predictions.

    ``unknown`` until a window holds ``drift_min_samples`` predictions, and for a version
    trained without a monitoring reference ("no baseline").
    """
    monitor = _monitor(request)
    model = request.app.state.inference.model
    if model is None:
        raise ModelUnavailable("no model is loaded yet: see /readyz")
    if name != model.name:
        raise HTTPException(404, detail=f"this service serves {model.name!r}, not {name!r}")
    await monitor.flush()  # the windows hold the predictions answered so far
    report = await run_in_threadpool(monitor.report, model.name, model.version, model.run_id)
    return MonitoringOut.model_validate(report)


@router.post(
    "/predictions/{prediction_id}/feedback",
    summary="Agree or disagree with a prediction's findings",
    status_code=201,
    response_model=FeedbackOut,
    responses={
        404: {"description": "No such prediction (or not yours)"},
        422: {"description": "A finding the prediction does not have, or a bad code"},
    },
)
async def feedback(
    request: Request,
    body: FeedbackIn,
    caller: ClinicianDep,
    engine: EngineDep,
    prediction_id: Annotated[str, Path(max_length=36, pattern=r"^[0-9a-f-]{36}$")],
) -> FeedbackOut:
    """Store the verdicts pseudonymously (model version, keyed study hash, key name)."""
    monitor: DriftMonitor | None = getattr(request.app.state, "monitor", None)
    if monitor is not None:  # a prediction just answered is recorded after its answer
        await monitor.flush()
    served = await run_in_threadpool(served_prediction, engine, prediction_id)
    if served is None or (served.owner != caller.name and not role_grants(caller.role, "admin")):
        raise HTTPException(404, detail=f"no prediction {prediction_id!r} of yours")
    unknown = sorted({v.finding for v in body.findings} - set(served.findings))
    if unknown:
        raise HTTPException(
            422,
            detail=f"the prediction has no finding {', '.join(unknown)}: "
            f"it has {', '.join(sorted(served.findings))}",
        )
    verdicts = {v.finding: Verdict(v.finding, v.agree) for v in body.findings}  # last wins
    await run_in_threadpool(
        record_feedback,
        engine,
        served,
        list(verdicts.values()),
        diagnosis_code=body.diagnosis_code,
        actor=caller.actor,
    )
    return FeedbackOut(
        prediction_id=prediction_id,
        model=served.model,
        version=served.version,
        recorded=len(verdicts),
    )
