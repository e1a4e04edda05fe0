"""Inference routes: predict a study, fetch its heatmap or Structured Report, list the model.

- ``POST /v1/predict`` (clinician): one study, as ``application/dicom`` (one instance) or
  ``multipart/related; type="application/dicom"`` (several). Answers the findings as JSON,
  or with ``Accept: application/dicom`` as a DICOM Comprehensive 3D SR for the PACS. The
  study-level probability of a finding is the highest over its instances.
- ``GET /v1/predictions/{id}`` (clinician): the same answer again, JSON or SR.
- ``GET /v1/predictions/{id}/heatmap.png`` (clinician): Grad-CAM of the positive findings.
- ``GET /v1/models`` (clinician): the served version, its labels, thresholds, model card.
- ``POST /v1/models/reload`` (admin): follow the alias now rather than at the next poll.

Predictions are kept in memory only, for ``prediction_ttl_seconds``, and only their
caller (or an admin) may read them again. Each one appends an audit record first; one
that cannot be audited is not answered (503).

The routes only bind HTTP to :class:`~medai.serving.inference.service.InferenceService`,
which does the work; its errors are answered by :mod:`medai.serving.errors`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import Response

from medai.errors import ModelUnavailable
from medai.serving.auth import Caller
from medai.serving.deps import AdminDep, ClinicianDep, SettingsDep
from medai.serving.inference.answers import DICOM, NO_STORE, answer, default_instance, model_out
from medai.serving.inference.audit import study_hash
from medai.serving.inference.predictions import StoredPrediction
from medai.serving.inference.schemas import ModelsOut, PredictionOut, Problem, ReloadOut
from medai.serving.inference.service import InferenceService
from medai.serving.limits import read_whole_body

__all__ = ["REFERENCE_HEADER", "router"]

router = APIRouter(prefix="/v1", tags=["inference"])


def get_inference(request: Request) -> InferenceService:
    """The app's :class:`InferenceService`; ModelUnavailable (503) when it serves no model."""
    inference: InferenceService | None = request.app.state.inference
    if inference is None:
        raise ModelUnavailable("this service serves no model: set MEDAI_SERVE_MODEL and restart")
    return inference


InferenceDep = Annotated[InferenceService, Depends(get_inference)]

REFERENCE_HEADER = "Medai-Reference"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "No model loaded yet, or the service is stopping"},
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such prediction (or it expired)"},
    **_UNAVAILABLE,
}
_PRINTABLE = r"^[ -~]*$"  # printable ASCII: the reference is echoed into JSON and headers

PredictionId = Annotated[str, Path(description="The prediction_id of a prediction.")]


def _reference(query: str | None, header: str | None) -> str | None:
    given = {value for value in (query, header) if value}
    if len(given) > 1:
        raise HTTPException(422, detail=f"?reference= and {REFERENCE_HEADER} differ: send one")
    return given.pop() if given else None


def _owned(inference: InferenceService, prediction_id: str, caller: Caller) -> StoredPrediction:
    stored = inference.prediction(prediction_id, caller)
    if stored is None:
        raise HTTPException(
            404,
            detail=f"no prediction {prediction_id!r}: predictions are kept for "
            f"{inference.settings.prediction_ttl_seconds:.0f} s, for the caller who made them",
        )
    return stored


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "One study: one instance as application/dicom, or several as "
        'multipart/related; type="application/dicom" (as STOW-RS sends them).',
        "content": {DICOM: _BINARY, "multipart/related": _BINARY},
    }
}
_FINDINGS_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The findings (JSON), or with `Accept: application/dicom` a DICOM "
        "Comprehensive 3D SR (IHE AI Results) of them",
        "content": {DICOM: _BINARY},
    },
}


@router.post(
    "/predict",
    summary="Predict the findings of one study",
    response_model=PredictionOut,
    openapi_extra=_PREDICT_BODY,
    responses={
        **_FINDINGS_200,
        **_UNAVAILABLE,
        422: {
            "model": Problem,
            "description": "Not DICOM, unreadable, no image, several studies, a bad reference",
        },
        400: {"model": Problem, "description": "Malformed multipart body, or upload cut short"},
        408: {"model": Problem, "description": "The upload stalled"},
        413: {"model": Problem, "description": "The body is over MEDAI_MAX_PREDICT_BYTES"},
        415: {"model": Problem, "description": "Not application/dicom or multipart/related"},
    },
)
async def predict(
    request: Request,
    caller: ClinicianDep,
    settings: SettingsDep,
    inference: InferenceDep,
    reference: Annotated[
        str | None,
        Query(
            max_length=128,
            pattern=_PRINTABLE,
            description="Your own reference for the study (e.g. a worklist entry), echoed "
            "back; not logged or audited. The header is preferred: URLs reach access logs.",
        ),
    ] = None,
    reference_header: Annotated[
        str | None,
        Header(alias=REFERENCE_HEADER, max_length=128, pattern=_PRINTABLE),
    ] = None,
) -> Response:
    """Findings of one study: each label's probability and its decision at the threshold.

    With several instances (images) of one study, a finding's probability is the highest
    over the instances. Instances of different studies in one request are refused (422).
    """
    read_body = functools.partial(
        read_whole_body,
        request,
        idle_timeout=settings.body_idle_timeout,
        total_timeout=settings.body_timeout,
        what="prediction upload",
    )
    stored = await inference.predict(
        request.headers.get("content-type"),
        read_body,
        caller=caller,
        reference=_reference(reference, reference_header),
    )
    monitor = getattr(request.app.state, "monitor", None)
    if monitor is not None:  # drift windows, and what feedback needs (serving.monitoring)
        study = study_hash(inference.key or b"", str(stored.source.get("StudyInstanceUID", "")))
        site = caller.site_id or caller.name  # the service knows no other site of a study
        # Recorded with the predictions answered meanwhile, after this answer.
        monitor.submit(stored, site=site, study=study)
    return await answer(stored, request.headers.get("accept"), settings.org_uid_root)


@router.get(
    "/predictions/{prediction_id}",
    summary="A recent prediction again (JSON, or the SR with Accept: application/dicom)",
    response_model=PredictionOut,
    responses={
        **_FINDINGS_200,
        **_ERRORS,
        422: {"model": Problem, "description": "The findings cannot be written as an SR"},
    },
)
async def get_prediction(
    request: Request, prediction_id: PredictionId, caller: ClinicianDep, inference: InferenceDep
) -> Response:
    """The answer given for ``prediction_id`` (same timings), while it is kept."""
    stored = _owned(inference, prediction_id, caller)
    return await answer(stored, request.headers.get("accept"), inference.settings.org_uid_root)


@router.get(
    "/predictions/{prediction_id}/heatmap.png",
    summary="Grad-CAM overlay of a prediction's positive findings",
    response_class=Response,
    responses={
        200: {"description": "PNG image", "content": {"image/png": _BINARY}},
        **_ERRORS,
        422: {"model": Problem, "description": "No such instance in the prediction"},
    },
)
async def heatmap(
    prediction_id: PredictionId,
    caller: ClinicianDep,
    inference: InferenceDep,
    instance: Annotated[
        int | None,
        Query(
            ge=0,
            description="Which instance (0-based, in request order); by default the one "
            "that gave the most probable positive finding.",
        ),
    ] = None,
) -> Response:
    """The model input with the Grad-CAM map of each positive finding overlaid.

    Without a positive finding, the plain input with the caption "no positive finding".
    """
    stored = _owned(inference, prediction_id, caller)
    count = int(stored.images.shape[0])
    index = default_instance(stored) if instance is None else instance
    if index >= count:
        raise HTTPException(
            422, detail=f"the prediction has {count} instance(s): instance is 0 to {count - 1}"
        )
    png = await inference.heatmap_png(stored, index)
    return Response(png, media_type="image/png", headers=NO_STORE)


@router.get(
    "/models",
    summary="The served model: version, labels, thresholds, model card",
    response_model=ModelsOut,
    responses=_UNAVAILABLE,
)
def list_models(caller: ClinicianDep, inference: InferenceDep) -> ModelsOut:
    """The version served now; empty until the first one is loaded (see ``/readyz``)."""
    model = inference.model
    return ModelsOut(models=[] if model is None else [model_out(model)])


@router.post(
    "/models/reload",
    summary="Follow the alias now (admin)",
    response_model=ReloadOut,
    responses={503: {"model": Problem, "description": "The new version cannot be loaded"}},
)
async def reload_model(caller: AdminDep, inference: InferenceDep) -> ReloadOut:
    """Load the version the alias points to, if it is not the one served, and switch to it.

    Requests in flight finish on the version they started with. When the new version
    cannot be loaded, the old one goes on being served and the answer is 503.
    """
    refresh = await inference.reload(caller.actor)
    return ReloadOut(previous=refresh.previous, current=refresh.current, changed=refresh.changed)
