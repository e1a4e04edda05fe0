"""Inference routes: predict a study, fetch its heatmap or Structured Report, list the model.

- ``POST /v1/predict`` (clinician): one study, as ``application/dicom`` (one instance) or
  ``multipart/related; type="application/dicom"`` (several). Answers the findings as JSON,
  or with ``Accept: application/dicom`` as a DICOM Comprehensive SR for the PACS. The
  study-level probability of a finding is the highest over its instances.
- ``GET /v1/predictions/{id}`` (clinician): the same answer again, JSON or SR.
- ``GET /v1/predictions/{id}/heatmap.png`` (clinician): Grad-CAM of the positive findings.
- ``GET /v1/models`` (clinician): the served version, its labels, thresholds, model card.
- ``POST /v1/models/reload`` (admin): follow the alias now rather than at the next poll.

Predictions are kept in memory only, for ``prediction_ttl_seconds``, and only their
caller (or an admin) may read them again. Each one appends an audit record first; one
that cannot be audited is not answered (503).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from medai.errors import BatcherStopped, MedaiError, ModelUnavailable
from medai.serving.auth import Caller, require_role
from medai.serving.context import ServiceDep
from medai.serving.inference.answers import (
    DICOM,
    NO_STORE,
    default_instance,
    model_out,
    report_response,
    wants_dicom,
)
from medai.serving.inference.audit import audit_prediction, study_hash
from medai.serving.inference.model import ServedModel
from medai.serving.inference.predictions import StoredPrediction, header_only
from medai.serving.inference.schemas import (
    ModelsOut,
    PredictionOut,
    Problem,
    ReloadOut,
)
from medai.serving.inference.service import InferenceService
from medai.serving.inference.upload import check_upload_type, parse_study, study_too_large
from medai.serving.keys import role_grants
from medai.serving.limits import read_whole_body

__all__ = ["REFERENCE_HEADER", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["inference"])

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

Clinician = Annotated[Caller, Depends(require_role("clinician"))]
Admin = Annotated[Caller, Depends(require_role("admin"))]


def get_inference(request: Request) -> InferenceService:
    """The app's :class:`InferenceService`; 503 when this service serves no model."""
    inference: InferenceService | None = request.app.state.inference
    if inference is None:
        raise HTTPException(
            503, detail="this service serves no model: set MEDAI_SERVE_MODEL and restart"
        )
    return inference


Inference = Annotated[InferenceService, Depends(get_inference)]
PredictionId = Annotated[str, Path(description="The prediction_id of a prediction.")]


def _model(inference: InferenceService) -> ServedModel:
    model = inference.model
    problem = inference.problem()
    if model is None or problem is not None:
        raise HTTPException(
            503, detail=problem or "no model is loaded", headers={"Retry-After": "10"}
        )
    return model


def _reference(query: str | None, header: str | None) -> str | None:
    given = {value for value in (query, header) if value}
    if len(given) > 1:
        raise HTTPException(422, detail=f"?reference= and {REFERENCE_HEADER} differ: send one")
    return given.pop() if given else None


def _owned(inference: InferenceService, prediction_id: str, caller: Caller) -> StoredPrediction:
    stored = inference.predictions.get(prediction_id)
    # Someone else's prediction is "not found": its existence is not theirs to learn.
    if stored is None or (stored.owner != caller.name and not role_grants(caller.role, "admin")):
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
        "Comprehensive SR of them",
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
    caller: Clinician,
    service: ServiceDep,
    inference: Inference,
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
    started = time.perf_counter()
    echo = _reference(reference, reference_header)
    model = _model(inference)
    content_type = request.headers.get("content-type")
    kind = check_upload_type(content_type)
    settings = service.settings
    max_bytes = min(settings.max_predict_bytes, settings.max_request_bytes)
    body = await read_whole_body(
        request,
        max_bytes=max_bytes,
        idle_timeout=service.body_idle_timeout,
        too_large=lambda: study_too_large(max_bytes),
        what="prediction upload",
    )
    datasets = await run_in_threadpool(
        parse_study, kind, content_type or "", body, max_instance_bytes=settings.max_instance_bytes
    )
    del body  # the data sets hold what is needed: do not keep the PHI twice

    def preprocess() -> list[Any]:
        images = []
        for number, ds in enumerate(datasets, 1):
            try:
                images.append(model.preprocess(ds))
            except Exception as exc:  # decoding or a photometric the reader cannot show
                raise HTTPException(
                    422,
                    detail=f"the image of instance {number} cannot be decoded or shown "
                    f"({type(exc).__name__})",
                ) from None
        return images

    images = await run_in_threadpool(preprocess)
    try:
        results = await inference.batcher.infer(model, images)
    except BatcherStopped as exc:
        raise HTTPException(503, detail=f"{exc}; retry", headers={"Retry-After": "5"}) from None
    probabilities = np.stack([result.probabilities for result in results])
    findings = model.findings(probabilities.max(axis=0).tolist())
    prediction_id = str(uuid.uuid4())
    assert inference.key is not None  # _model() refuses without one
    try:
        await run_in_threadpool(
            audit_prediction,
            service.engine,
            actor=caller.actor,
            study=study_hash(inference.key, str(datasets[0].StudyInstanceUID)),
            prediction_id=prediction_id,
            model=model.name,
            version=model.version,
            instances=len(datasets),
            findings=findings,
        )
    except (SQLAlchemyError, MedaiError) as exc:
        logger.error("prediction %s could not be audited: %s", prediction_id, type(exc).__name__)
        raise HTTPException(
            503, detail="the prediction could not be audited, so it is not answered; retry"
        ) from None
    inference.metrics.predictions.labels(model.name, model.version).inc()
    answer = PredictionOut.model_validate(
        {
            "prediction_id": prediction_id,
            "reference": echo,
            "model": {"name": model.name, "version": model.version, "alias": model.alias},
            "study": {"instances": len(datasets)},
            "findings": [vars(finding) for finding in findings],
            "heatmap_url": f"/v1/predictions/{prediction_id}/heatmap.png",
            "timing_ms": {
                "total": 1000 * (time.perf_counter() - started),
                "queue": 1000 * max(result.queue_s for result in results),
                "inference": 1000 * max(result.inference_s for result in results),
            },
        }
    ).model_dump(mode="json")
    import torch

    stored = StoredPrediction(
        id=prediction_id,
        owner=caller.name,
        model=model,
        findings=tuple(findings),
        instance_probabilities=probabilities,
        images=torch.stack(images),
        source=header_only(datasets[0]),
        response=answer,
    )
    inference.predictions.put(stored)
    if wants_dicom(request.headers.get("accept")):
        return await report_response(stored)
    return JSONResponse(answer, headers=NO_STORE)


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
    request: Request, prediction_id: PredictionId, caller: Clinician, inference: Inference
) -> Response:
    """The answer given for ``prediction_id`` (same timings), while it is kept."""
    stored = _owned(inference, prediction_id, caller)
    if wants_dicom(request.headers.get("accept")):
        return await report_response(stored)
    return JSONResponse(stored.response, headers=NO_STORE)


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
    caller: Clinician,
    inference: Inference,
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
    png = stored.heatmaps.get(index)
    if png is None:
        from medai.serving.inference.heatmap import gradcam_overlay_png

        positive = [i for i, finding in enumerate(stored.findings) if finding.positive]
        model, image = stored.model, stored.images[index]

        def draw() -> bytes:
            return gradcam_overlay_png(model.network, image, positive, model.labels)

        try:
            png = await inference.batcher.run_exclusive(draw)
        except BatcherStopped as exc:
            raise HTTPException(503, detail=f"{exc}; retry") from None
        stored.heatmaps[index] = png
    return Response(png, media_type="image/png", headers=NO_STORE)


@router.get(
    "/models",
    summary="The served model: version, labels, thresholds, model card",
    response_model=ModelsOut,
    responses=_UNAVAILABLE,
)
def list_models(caller: Clinician, inference: Inference) -> ModelsOut:
    """The version served now; empty until the first one is loaded (see ``/readyz``)."""
    model = inference.model
    return ModelsOut(models=[] if model is None else [model_out(model)])


@router.post(
    "/models/reload",
    summary="Follow the alias now (admin)",
    response_model=ReloadOut,
    responses={503: {"model": Problem, "description": "The new version cannot be loaded"}},
)
async def reload_model(caller: Admin, inference: Inference) -> ReloadOut:
    """Load the version the alias points to, if it is not the one served, and switch to it.

    Requests in flight finish on the version they started with. When the new version
    cannot be loaded, the old one goes on being served and the answer is 503.
    """
    try:
        refresh = await inference.refresh(caller.actor)
    except ModelUnavailable as exc:
        served = inference.model
        kept = "" if served is None else f" (still serving version {served.version})"
        raise HTTPException(503, detail=f"{exc}{kept}") from None
    return ReloadOut(previous=refresh.previous, current=refresh.current, changed=refresh.changed)
