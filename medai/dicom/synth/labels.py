"""The per-site label sheet: the hospital's RIS export of chest reports (PHI by nature)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medai.dicom.synth.datasets import StudyPlan

__all__ = ["LABEL_COLUMNS", "report_text", "write_label_sheet"]

LABEL_COLUMNS = (
    "accession_number",
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "study_date",
    "modality",
    "nodule",
    "effusion",
    "cardiomegaly",
    "reading_radiologist",
    "report_text",
)

_PHRASES = {
    ("nodule", True): (
        "Rounded nodular opacity projected over the lung; CT recommended.",
        "Solitary pulmonary nodule.",
    ),
    ("nodule", False): ("No focal lung lesion.", "No pulmonary nodule."),
    ("effusion", True): (
        "Blunted costophrenic angle with a meniscus: pleural effusion.",
        "Small pleural effusion.",
    ),
    ("effusion", False): ("No pleural effusion.", "Costophrenic angles are sharp."),
    ("cardiomegaly", True): (
        "Cardiomegaly, cardiothoracic ratio above 0.5.",
        "The heart is enlarged.",
    ),
    ("cardiomegaly", False): ("Heart size within normal limits.", "Normal cardiac silhouette."),
}


_CT_PHRASES = {
    True: ("Solid pulmonary nodule; follow-up CT advised.", "Solitary pulmonary nodule."),
    False: ("No pulmonary nodule.", "Lungs clear, no focal lesion."),
}


def report_text(plan: StudyPlan) -> str:
    """A short free-text report whose wording agrees with the study's findings."""
    rng = np.random.default_rng([plan.image_seed, 7])
    if plan.modality == "CT":
        options = _CT_PHRASES[plan.nodule]
        return f"CT THORAX. {options[int(rng.integers(len(options)))]}"
    sentences = [f"CHEST {plan.view_position}."]
    for finding, present in (
        ("nodule", plan.nodule),
        ("effusion", plan.effusion),
        ("cardiomegaly", plan.cardiomegaly),
    ):
        options = _PHRASES[(finding, present)]
        sentences.append(options[int(rng.integers(len(options)))])
    return " ".join(sentences)


def write_label_sheet(path: Path, plans: Iterable[StudyPlan]) -> None:
    """Write one row per study of ``plans`` to the CSV file ``path``.

    A CT row reports ``nodule`` only: its ``effusion`` and ``cardiomegaly`` cells are blank
    (not reported).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        for plan in plans:
            writer.writerow(
                [
                    plan.accession_number,
                    str(plan.study_instance_uid),
                    plan.patient.patient_id,
                    plan.patient.dicom_name,
                    plan.study_date.isoformat(),
                    plan.modality,
                    int(plan.nodule),
                    "" if plan.modality == "CT" else int(plan.effusion),
                    "" if plan.modality == "CT" else int(plan.cardiomegaly),
                    plan.staff.reading,
                    report_text(plan),
                ]
            )
