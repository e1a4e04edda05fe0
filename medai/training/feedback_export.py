"""Clinician feedback on served predictions, exported as labels for the next snapshot.

The inference service stores each verdict (:mod:`medai.serving.monitoring.feedback`);
this module reads them from the catalog and writes a CSV with one row per prediction and
clinician, in the sheet format ``medai labels import`` reads: the prediction, model
version, site, the study's research pseudonym in a ``PseudonymizedStudyInstanceUID``
column (the StudyInstanceUID that de-identification gave the study at ingest, which labels
import matches as it is, without hashing it again), one column per finding holding the
label the verdict implies (``1``/``0``: the model's decision when the clinician agreed,
its opposite when not; empty without a verdict), the final diagnosis code and who gave it.

Nothing in it identifies a patient: the study column is a pseudonym under the campaign key,
not the original UID. An inference-only deployment has no campaign key, so its predictions
carry no research pseudonym: their rows have that column empty (counted in
:attr:`FeedbackExport.without_study`) and labels import rejects them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.catalog.db import create_engine_for
from medai.catalog.models import PredictionFeedback, ServedPrediction
from medai.collection.labels.rows import PSEUDONYMIZED_STUDY_UID
from medai.config import Settings

__all__ = ["FEEDBACK_COLUMNS", "FeedbackExport", "export_feedback"]

FEEDBACK_COLUMNS = ("prediction_id", "model", "version", "site", PSEUDONYMIZED_STUDY_UID)
_TAIL = ("diagnosis_code", "clinician", "given_at")


@dataclass(frozen=True)
class FeedbackExport:
    """What was written."""

    path: Path
    rows: int
    verdicts: int
    findings: tuple[str, ...]
    without_study: int = 0
    """Rows without a research pseudonym (predictions served outside a campaign)."""


def export_feedback(
    name: str,
    out: Path,
    settings: Settings,
    *,
    version: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeedbackExport:
    """Write the feedback on ``name``'s predictions (of ``version`` only, if given) to ``out``.

    Raises
    ------
    OSError
        When ``out`` cannot be written.
    """
    engine = create_engine_for(settings.resolved_database_url)
    query = (
        select(PredictionFeedback, ServedPrediction)
        .join(ServedPrediction)
        .where(ServedPrediction.model == name)
        .order_by(ServedPrediction.created_at, PredictionFeedback.actor, PredictionFeedback.id)
    )
    if version is not None:
        query = query.where(ServedPrediction.version == version)
    try:
        with Session(engine) as session:
            pairs = [(row[0], row[1]) for row in session.execute(query)]
    finally:
        engine.dispose()
    rows: dict[tuple[str, str], dict[str, str]] = {}
    findings: list[str] = []
    for number, (verdict, served) in enumerate(pairs, 1):
        if verdict.finding not in findings:
            findings.append(verdict.finding)
        row = rows.setdefault(
            (served.prediction_id, verdict.actor),
            {
                "prediction_id": served.prediction_id,
                "model": served.model,
                "version": served.version,
                "site": served.site,
                PSEUDONYMIZED_STUDY_UID: served.research_study_uid or "",
                "diagnosis_code": "",
                "clinician": verdict.actor,
                "given_at": "",
            },
        )
        positive = bool(served.findings.get(verdict.finding, {}).get("positive"))
        row[verdict.finding] = "1" if positive == verdict.agree else "0"
        row["diagnosis_code"] = verdict.diagnosis_code or row["diagnosis_code"]
        row["given_at"] = max(row["given_at"], verdict.created_at.isoformat())
        if progress is not None:
            progress(number, len(pairs))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=[*FEEDBACK_COLUMNS, *findings, *_TAIL], restval=""
        )
        writer.writeheader()
        writer.writerows(rows.values())
    without_study = sum(1 for row in rows.values() if not row[PSEUDONYMIZED_STUDY_UID])
    return FeedbackExport(out, len(rows), len(pairs), tuple(findings), without_study)
