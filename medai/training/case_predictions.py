"""Per-case test predictions, keyed by manifest row: what a run said about each test image.

A run logs them as ``evaluation/test_cases.csv`` (:data:`CASES_ARTIFACT`): one row per test
instance, in manifest order, with the manifest row number (``row``), the case id (``case``,
the pseudonymized SOPInstanceUID, which names the same image in every snapshot), its study,
patient (pseudonym) and site, then ``<finding>_probability`` and ``<finding>_label`` (1, 0,
or empty where not labelled) per finding. Two runs are compared on the cases both hold
(:mod:`medai.training.gate`). Everything in it is pseudonymous, like the manifest itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "CASES_ARTIFACT",
    "CASE_COLUMNS",
    "case_index",
    "case_predictions",
    "label_column",
    "probability_column",
    "read_case_predictions",
]

CASES_ARTIFACT = "evaluation/test_cases.csv"
CASE_COLUMNS = ("row", "case", "study_uid", "patient", "site")


def probability_column(finding: str) -> str:
    """The column of ``finding``'s predicted probability."""
    return f"{finding}_probability"


def label_column(finding: str) -> str:
    """The column of ``finding``'s label (1, 0, or missing)."""
    return f"{finding}_label"


def case_index(manifest: Any, split: str = "test") -> pd.DataFrame:
    """The identifying columns of ``split``'s rows, in manifest order.

    Parameters
    ----------
    manifest
        The snapshot manifest (pandas DataFrame, one row per instance, in manifest order).
    split
        Which split's rows.

    Returns
    -------
    pandas.DataFrame
        :data:`CASE_COLUMNS`: the row number in the whole manifest, the SOPInstanceUID as
        ``case``, study, patient and site.
    """
    rows = manifest.reset_index(drop=True)
    chosen = rows[rows["split"] == split]
    return pd.DataFrame(
        {
            "row": chosen.index.to_numpy(dtype=np.int64),
            "case": chosen["sop_instance_uid"].astype(str).to_numpy(),
            "study_uid": chosen["study_uid"].astype(str).to_numpy(),
            "patient": chosen["patient"].astype(str).to_numpy(),
            "site": chosen["site"].astype(str).to_numpy(),
        }
    )


def case_predictions(
    cases: pd.DataFrame,
    findings: Sequence[str],
    y_true: npt.NDArray[np.float64],
    y_prob: npt.NDArray[np.float64],
) -> pd.DataFrame:
    """One row per test case: its identifiers, each finding's probability and label.

    Parameters
    ----------
    cases
        :func:`case_index` of the test split (in the order the predictions were made).
    findings
        The model's labels, in the order of its outputs.
    y_true, y_prob
        Labels (NaN where unknown) and probabilities, ``(N, len(findings))``.

    Raises
    ------
    ValueError
        When the predictions and the cases differ in number (they must be in manifest order).
    """
    if y_prob.shape != (len(cases), len(findings)) or y_true.shape != y_prob.shape:
        raise ValueError(
            f"{len(cases)} test cases and {len(findings)} findings, but predictions of shape "
            f"{y_prob.shape} and labels of shape {y_true.shape}"
        )
    frame = cases.loc[:, list(CASE_COLUMNS)].reset_index(drop=True).copy()
    for column, finding in enumerate(findings):
        frame[probability_column(finding)] = y_prob[:, column]
        frame[label_column(finding)] = pd.array(
            [None if np.isnan(v) else int(v) for v in y_true[:, column]], dtype="Int8"
        )
    return frame


def read_case_predictions(path: Path) -> pd.DataFrame:
    """Read a run's ``test_cases.csv`` back with string ids and nullable integer labels."""
    frame = pd.read_csv(path, dtype={c: "string" for c in CASE_COLUMNS if c != "row"})
    for column in frame.columns:
        if column.endswith("_label"):
            frame[column] = frame[column].astype("Int8")
    return frame
