"""The public JSON of the monitoring routes: the drift report and clinician feedback.

Statistics only: no study, patient or image identifier. Sites are the callers' edge sites
or API key names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FeatureOut",
    "FeedbackIn",
    "FeedbackOut",
    "FindingAgreementOut",
    "GroupOut",
    "HistogramOut",
    "MonitoringOut",
    "ThresholdsOut",
    "VerdictIn",
]

StatusOut = Literal["unknown", "ok", "warn", "drift"]


class FeatureOut(BaseModel):
    """One feature of a window against the training reference."""

    feature: str = Field(examples=["manufacturer"])
    kind: Literal["input", "score"]
    samples: int = Field(description="Predictions of the window with this feature")
    psi: float | None = Field(description="Population stability index; None when unknown")
    p_value: float | None = Field(description="Two-sample test (chi-square or KS) p-value")
    status: StatusOut


class HistogramOut(BaseModel):
    """The model inputs' pooled intensity histogram: reference and window proportions."""

    edges: list[float]
    reference: list[float]
    window: list[float]
    psi: float | None


class GroupOut(BaseModel):
    """One window (a site's, or all predictions')."""

    predictions: int = Field(description="Predictions in the window")
    status: StatusOut
    features: list[FeatureOut]
    histogram: HistogramOut | None = None


class ThresholdsOut(BaseModel):
    """The settings ``drift_*`` the status was decided with."""

    warn_psi: float
    alert_psi: float
    p_value: float
    min_samples: int


class FindingAgreementOut(BaseModel):
    """Clinicians' verdicts on one finding of this version."""

    agree: int
    disagree: int
    agreement: float = Field(description="agree / (agree + disagree)")


class MonitoringOut(BaseModel):
    """The drift of the served version's inputs and scores, and the feedback agreement."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "chest-xray-triage",
                    "version": "4",
                    "status": "drift",
                    "baseline": True,
                    "baseline_problem": None,
                    "window": 200,
                    "thresholds": {
                        "warn_psi": 0.1,
                        "alert_psi": 0.25,
                        "p_value": 0.01,
                        "min_samples": 30,
                    },
                    "overall": {"predictions": 200, "status": "drift", "features": []},
                    "sites": {},
                    "feedback": {"effusion": {"agree": 41, "disagree": 4, "agreement": 0.911}},
                }
            ]
        }
    )

    model: str
    version: str
    status: StatusOut = Field(description="The overall window's status")
    baseline: bool = Field(description="Whether the version has a training reference")
    baseline_problem: str | None = Field(description="Why there is no reference, if none")
    window: int = Field(description="Predictions per window (MEDAI_DRIFT_WINDOW)")
    thresholds: ThresholdsOut
    overall: GroupOut
    sites: dict[str, GroupOut] = Field(description="Per site: the caller's edge site or key")
    feedback: dict[str, FindingAgreementOut] = Field(description="Per finding")


class VerdictIn(BaseModel):
    """A verdict on one finding of the prediction."""

    model_config = ConfigDict(extra="forbid")

    finding: str = Field(max_length=64, examples=["effusion"])
    agree: bool = Field(description="Whether the clinician agrees with the model's decision")


class FeedbackIn(BaseModel):
    """A clinician's verdicts on a prediction; a later verdict on a finding replaces theirs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"findings": [{"finding": "effusion", "agree": False}], "diagnosis_code": "J91.8"}
            ]
        },
    )

    findings: list[VerdictIn] = Field(min_length=1, max_length=64)
    diagnosis_code: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,31}$",
        description="The final diagnosis as a code (ICD-10, SNOMED CT...), never free text",
        examples=["J91.8"],
    )


class FeedbackOut(BaseModel):
    """What was stored."""

    prediction_id: str
    model: str
    version: str
    recorded: int = Field(description="Verdicts stored")
