"""The public JSON of the inference routes (separate from the service's own objects).

No schema here carries an identifier from the study: a prediction names the caller's
own ``reference`` (echoed as given), never a patient, UID or accession number.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FindingOut",
    "LabelOut",
    "ModelInputOut",
    "ModelRef",
    "ModelsOut",
    "PredictionOut",
    "Problem",
    "ReloadOut",
    "ServedModelOut",
    "StudyOut",
    "TimingOut",
]

_PREDICTION_EXAMPLE: dict[str, Any] = {
    "prediction_id": "0b6f3c52-8a0e-4d7e-9c55-5f0f4b1b7c1e",
    "reference": "worklist-2291",
    "model": {"name": "chest-xray-triage", "version": "4", "alias": "champion"},
    "study": {"instances": 1},
    "findings": [
        {"label": "nodule", "probability": 0.081, "threshold": 0.42, "positive": False},
        {"label": "effusion", "probability": 0.734, "threshold": 0.37, "positive": True},
        {"label": "cardiomegaly", "probability": 0.212, "threshold": 0.5, "positive": False},
    ],
    "heatmap_url": "/v1/predictions/0b6f3c52-8a0e-4d7e-9c55-5f0f4b1b7c1e/heatmap.png",
    "timing_ms": {"total": 41.7, "queue": 3.2, "inference": 18.9},
}


class Problem(BaseModel):
    """Every error: ``detail`` says what went wrong and what to do (a list for bad parameters)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "the instance cannot be read as DICOM"}]}
    )

    detail: str | list[Any]


class ModelRef(BaseModel):
    """The model version that made a prediction."""

    name: str = Field(examples=["chest-xray-triage"])
    version: str = Field(description="The registered model version", examples=["4"])
    alias: str = Field(description="The alias it was served by", examples=["champion"])


class FindingOut(BaseModel):
    """One finding of the study."""

    label: str = Field(examples=["effusion"])
    probability: float = Field(
        ge=0.0,
        le=1.0,
        description="The study-level probability: the highest over the study's instances.",
    )
    threshold: float = Field(
        description="The operating threshold, chosen on the validation split in training."
    )
    positive: bool = Field(description="probability >= threshold")


class StudyOut(BaseModel):
    """What was predicted on (no identifiers)."""

    instances: int = Field(ge=1, description="Instances (images) of the study sent.")
    slices: int | None = Field(
        default=None,
        ge=1,
        description="For a model of CT/MR series: the slices assembled into the volume "
        "(localizers and identical duplicates are left out); absent for image models.",
    )


class TimingOut(BaseModel):
    """Milliseconds spent on the request."""

    total: float = Field(ge=0, description="From the request's arrival to its answer.")
    queue: float = Field(ge=0, description="Waiting for a forward pass (the micro-batcher).")
    inference: float = Field(ge=0, description="The forward pass (shared with its batch).")


class PredictionOut(BaseModel):
    """The findings of one study, at the model's operating thresholds."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PREDICTION_EXAMPLE]})

    prediction_id: str = Field(
        description="Ask for its heatmap or report again with this id, while it is kept."
    )
    reference: str | None = Field(
        description="The caller's own reference (query `reference` or header "
        "`Medai-Reference`), echoed as sent."
    )
    model: ModelRef
    study: StudyOut
    findings: list[FindingOut]
    heatmap_url: str = Field(description="The Grad-CAM overlay of the positive findings (PNG).")
    timing_ms: TimingOut


class LabelOut(BaseModel):
    """A finding the model reports, and its operating threshold."""

    label: str = Field(examples=["effusion"])
    threshold: float = Field(examples=[0.37])


class ModelInputOut(BaseModel):
    """What the network is given: the DICOM display image, resized and scaled."""

    image_size: list[int] = Field(examples=[[128, 128]])
    intensity: str = Field(examples=["scale"])


class ServedModelOut(BaseModel):
    """A served model version."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(examples=["chest-xray-triage"])
    version: str = Field(examples=["4"])
    alias: str = Field(examples=["champion"])
    run_id: str = Field(description="The MLflow training run of this version.")
    network: str = Field(examples=["resnet18"])
    labels: list[LabelOut]
    input: ModelInputOut
    device: str = Field(examples=["cpu"])
    backend: str = Field(
        description="What runs the forward pass: torch, onnx (ONNX Runtime), onnx-int8 "
        "(the int8 model training proved and the load checked) or torch-bfloat16 (the "
        "network under bfloat16 autocast, likewise proved); Grad-CAM always uses torch",
        examples=["onnx"],
    )
    backend_reason: str = Field(
        description="Why that backend serves (its check and timing at load, or why the "
        "faster ones were refused)"
    )
    loaded_at: dt.datetime
    model_card: str | None = Field(
        description="The model card (Markdown): intended use, data, evaluation, limits."
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="The version's medai.* registry tags: medai.snapshot_hash, medai.labels, "
        "and after a gate override medai.gate_override (JSON: by, at, reason, failures), "
        "medai.gate_override_reason, medai.gate_override_by, medai.gate_override_at.",
    )


class ModelsOut(BaseModel):
    """The models this service serves (one, today)."""

    models: list[ServedModelOut]


class ReloadOut(BaseModel):
    """The served version before and after following the alias."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"previous": "3", "current": "4", "changed": True}]}
    )

    previous: str | None
    current: str
    changed: bool
