"""How predictions are answered: JSON or a DICOM SR, heatmaps' instance, the model's card.

Content negotiation is on ``Accept``: ``application/dicom`` preferred to JSON (by its
q-value) gives the Comprehensive 3D SR built by
:func:`medai.serving.inference.report.build_findings_sr`; anything else, JSON. Every
answer about a study carries ``Cache-Control: no-store``: it is clinical data.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from medai.serving.inference.model import ServedModel
from medai.serving.inference.predictions import StoredPrediction
from medai.serving.inference.schemas import LabelOut, ModelInputOut, ServedModelOut

__all__ = [
    "DICOM",
    "NO_STORE",
    "answer",
    "default_instance",
    "model_out",
    "report_response",
    "wants_dicom",
]

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
NO_STORE = {"Cache-Control": "no-store"}


def wants_dicom(accept: str | None) -> bool:
    """Whether the Accept header prefers ``application/dicom`` to JSON (by q-values)."""
    quality: dict[str, float] = {}
    for item in (accept or "").split(","):
        media, *params = (piece.strip() for piece in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    dicom = quality.get(DICOM, 0.0)
    json_q = max(quality.get("application/json", 0.0), quality.get("application/*", 0.0))
    return dicom > 0 and dicom >= json_q


async def answer(
    stored: StoredPrediction, accept: str | None, uid_root: str | None = None
) -> Response:
    """A prediction's answer: its JSON, or its DICOM SR when ``accept`` prefers that.

    ``uid_root``: the organisation's UID root for the SR's UIDs (``org_uid_root``).
    """
    if wants_dicom(accept):
        return await report_response(stored, uid_root)
    return JSONResponse(stored.response, headers=NO_STORE)


async def report_response(stored: StoredPrediction, uid_root: str | None = None) -> Response:
    """The prediction's DICOM Comprehensive 3D SR, built once (the same instance UID after).

    Raises
    ------
    fastapi.HTTPException
        422 when highdicom refuses the study's attributes.
    """
    if stored.report is None:
        from medai.serving.inference.report import build_findings_sr

        def build() -> bytes:
            import pydicom

            sr = build_findings_sr(
                stored.source,
                stored.findings,
                model_name=stored.model.name,
                model_version=stored.model.version,
                series=stored.series,
                uid_root=uid_root,
            )
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
            return buffer.getvalue()

        try:
            stored.report = await run_in_threadpool(build)
        except (ValueError, TypeError, AttributeError) as exc:  # highdicom's refusals
            logger.info("no SR for prediction %s: %s", stored.id, type(exc).__name__)
            raise HTTPException(
                422,
                detail=f"the findings cannot be written as a DICOM SR ({type(exc).__name__}): "
                "the study lacks attributes a report must reference; ask for JSON instead",
            ) from None
    headers = NO_STORE | {
        "Medai-Prediction-Id": stored.id,
        "Content-Location": f"/v1/predictions/{stored.id}",
    }
    return Response(stored.report, media_type=DICOM, headers=headers)


def default_instance(stored: StoredPrediction) -> int:
    """The instance whose heatmap is shown by default.

    The image that gave the study its most probable positive finding; the first one
    when nothing is positive.
    """
    positive = [i for i, finding in enumerate(stored.findings) if finding.positive]
    if not positive:
        return 0
    best = max(positive, key=lambda i: stored.findings[i].probability)
    return int(np.argmax(stored.instance_probabilities[:, best]))


def model_out(model: ServedModel) -> ServedModelOut:
    """The public description of a served version (``GET /v1/models``)."""
    return ServedModelOut(
        name=model.name,
        version=model.version,
        alias=model.alias,
        run_id=model.run_id,
        network=model.config.network.title,
        labels=[
            LabelOut(label=label, threshold=threshold)
            for label, threshold in zip(model.labels, model.thresholds, strict=True)
        ],
        input=ModelInputOut(
            image_size=list(model.config.transforms.image_size),
            intensity=model.config.transforms.intensity,
        ),
        device=str(model.device),
        backend=model.backend_name,
        backend_reason="" if model.backend is None else model.backend.reason,
        loaded_at=model.loaded_at,
        model_card=model.card,
        tags=dict(model.tags),
    )
