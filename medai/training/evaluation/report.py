"""The evaluation of a multi-label model: thresholds from validation, test results per site."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from medai.training.evaluation.calibration import expected_calibration_error
from medai.training.evaluation.metrics import (
    Array,
    auroc,
    bootstrap_auroc_ci,
    choose_threshold,
    sensitivity_specificity,
)
from medai.training.evaluation.plots import save_reliability_plot, save_roc_plot

__all__ = ["ALL_SITES", "EvaluationResult", "evaluate"]

ALL_SITES = "all"


@dataclass
class EvaluationResult:
    """What :func:`evaluate` found.

    Attributes
    ----------
    table
        One row per (label, site): ``label, site, n, n_positive, auroc, auroc_low,
        auroc_high, threshold, sensitivity, specificity, ece``; ``site == "all"`` is the
        pooled test set.
    plots
        PNG files written, by file stem (``reliability_<label>``, ``roc_<label>``).
    """

    table: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """A flat ``{name: value}`` dictionary for ``mlflow.log_metrics`` (NaNs left out).

        Names look like ``test/auroc/<label>`` for the pooled set and
        ``test/site/<site>/auroc/<label>`` per site (MLflow allows ``/`` in names).
        """
        out: dict[str, float] = {}
        measures = (
            "auroc",
            "auroc_low",
            "auroc_high",
            "threshold",
            "sensitivity",
            "specificity",
            "ece",
        )
        for row in self.table.itertuples(index=False):
            label, site = _metric_name(str(row.label)), str(row.site)
            base = prefix if site == ALL_SITES else f"{prefix}/site/{_metric_name(site)}"
            for measure in measures:
                value = float(getattr(row, measure))
                if not math.isnan(value):
                    out[f"{base}/{measure}/{label}"] = value
        macro = self.table[self.table["site"] == ALL_SITES]["auroc"].dropna()
        if len(macro):
            out[f"{prefix}/auroc/macro"] = float(macro.mean())
        return out


def _metric_name(text: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and spaces; replace the rest.
    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", text)


def evaluate(
    labels: Sequence[str],
    val_true: npt.ArrayLike,
    val_prob: npt.ArrayLike,
    test_true: npt.ArrayLike,
    test_prob: npt.ArrayLike,
    *,
    test_sites: Sequence[Any] | None = None,
    threshold_method: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    n_bins: int = 10,
    seed: int = 0,
    plot_dir: str | Path | None = None,
) -> EvaluationResult:
    """Evaluate per label on the test set (pooled and per site), thresholds from validation.

    Parameters
    ----------
    labels
        Label names, in the order of the columns of the arrays.
    val_true, val_prob
        Validation labels (0/1, NaN where unknown) and probabilities, shape ``(N, L)``.
    test_true, test_prob
        The same for the test set, shape ``(M, L)``.
    test_sites
        Site of each test row; adds one row per site and label to the table.
    threshold_method, target_sensitivity
        See :func:`choose_threshold`.
    n_bootstrap, confidence, seed
        See :func:`bootstrap_auroc_ci`.
    n_bins
        Calibration bins.
    plot_dir
        Where to write a reliability diagram and a ROC curve (with the operating point)
        per label, for the pooled test set; None for none.

    Returns
    -------
    EvaluationResult
    """
    vt, vp = _matrix(val_true, len(labels)), _matrix(val_prob, len(labels))
    tt, tp = _matrix(test_true, len(labels)), _matrix(test_prob, len(labels))
    if vt.shape != vp.shape or tt.shape != tp.shape:
        raise ValueError("labels and probabilities must have the same shape")
    sites = None if test_sites is None else np.asarray([str(s) for s in test_sites])
    if sites is not None and sites.size != tt.shape[0]:
        raise ValueError(f"{sites.size} sites for {tt.shape[0]} test rows")
    groups: list[tuple[str, npt.NDArray[np.bool_]]] = [(ALL_SITES, np.ones(tt.shape[0], bool))]
    if sites is not None:
        groups += [(site, sites == site) for site in sorted(set(sites.tolist()))]

    rows: list[dict[str, Any]] = []
    plots: dict[str, Path] = {}
    for column, label in enumerate(labels):
        known_val = ~np.isnan(vt[:, column])
        threshold = choose_threshold(
            vt[known_val, column],
            vp[known_val, column],
            method=threshold_method,
            target_sensitivity=target_sensitivity,
        )
        for site, members in groups:
            keep = members & ~np.isnan(tt[:, column])
            y, p = tt[keep, column], tp[keep, column]
            low, high = bootstrap_auroc_ci(
                y, p, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
            )
            sens, spec = (
                sensitivity_specificity(y, p, threshold)
                if not math.isnan(threshold)
                else (math.nan, math.nan)
            )
            rows.append(
                {
                    "label": label,
                    "site": site,
                    "n": int(y.size),
                    "n_positive": int(y.sum()),
                    "auroc": auroc(y, p) if y.size else math.nan,
                    "auroc_low": low,
                    "auroc_high": high,
                    "threshold": threshold,
                    "sensitivity": sens,
                    "specificity": spec,
                    "ece": expected_calibration_error(y, p, n_bins=n_bins),
                }
            )
            if plot_dir is not None and site == ALL_SITES and y.size:
                name = re.sub(r"[^0-9A-Za-z_.-]", "_", label)
                stem = f"reliability_{name}"
                plots[stem] = save_reliability_plot(
                    y, p, Path(plot_dir) / f"{stem}.png", n_bins=n_bins, title=f"{label}: test"
                )
                if 0 < y.sum() < y.size:
                    stem = f"roc_{name}"
                    plots[stem] = save_roc_plot(
                        y, p, Path(plot_dir) / f"{stem}.png", threshold=threshold, title=label
                    )
    return EvaluationResult(pd.DataFrame(rows), plots)


def _matrix(values: npt.ArrayLike, n_labels: int) -> Array:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and n_labels == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != n_labels:
        raise ValueError(f"expected shape (N, {n_labels}), got {array.shape}")
    return array
