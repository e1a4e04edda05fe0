"""The evaluation of a multi-label model: thresholds from validation, test results per site."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from medai.training.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_auroc
from medai.training.evaluation.calibration import expected_calibration_error
from medai.training.evaluation.intervals import wilson_interval
from medai.training.evaluation.metrics import Array, choose_threshold
from medai.training.evaluation.plots import save_reliability_plot, save_roc_plot
from medai.training.evaluation.study import study_level

__all__ = ["ALL_SITES", "MIN_POSITIVES", "EvaluationResult", "evaluate"]

ALL_SITES = "all"
MIN_POSITIVES = 10
"""Fewer positive cases than this in a (label, site) stratum draws a warning."""

_log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` found.

    Attributes
    ----------
    table
        The headline results, one row per (label, site): ``level, label, site, n,
        n_positive, n_patients, auroc, auroc_low, auroc_high, auroc_percentile_low,
        auroc_percentile_high, design_effect, threshold,
        sensitivity, sensitivity_low, sensitivity_high, specificity, specificity_low,
        specificity_high, ece``; ``site == "all"`` is the pooled test set. Study level
        (``level == "study"``: one score per study, the maximum over its images, as the
        service scores) when the test studies were given, else image level.
    plots
        PNG files written, by file stem (``reliability_<label>``, ``roc_<label>``).
    image_table
        The same per image when ``table`` is per study; empty otherwise.
    warnings
        What makes an interval untrustworthy: a zero-width interval, a stratum with
        fewer than :data:`MIN_POSITIVES` positives (also logged).
    """

    table: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)
    image_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    warnings: list[str] = field(default_factory=list)

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """A flat ``{name: value}`` dictionary for ``mlflow.log_metrics`` (NaNs left out).

        Names look like ``test/auroc/<label>`` for the pooled set and
        ``test/site/<site>/auroc/<label>`` per site (MLflow allows ``/`` in names).
        """
        out: dict[str, float] = {}
        out.update(_flat_metrics(self.table, prefix))
        if len(self.image_table):
            out.update(_flat_metrics(self.image_table, f"{prefix}/image"))
        macro = self.table[self.table["site"] == ALL_SITES]["auroc"].dropna()
        if len(macro):
            out[f"{prefix}/auroc/macro"] = float(macro.mean())
        return out


_MEASURES = (
    "auroc",
    "auroc_low",
    "auroc_high",
    "threshold",
    "sensitivity",
    "sensitivity_low",
    "sensitivity_high",
    "specificity",
    "specificity_low",
    "specificity_high",
    "ece",
)


def _flat_metrics(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in table.itertuples(index=False):
        label, site = _metric_name(str(row.label)), str(row.site)
        base = prefix if site == ALL_SITES else f"{prefix}/site/{_metric_name(site)}"
        for measure in _MEASURES:
            value = float(getattr(row, measure))
            if not math.isnan(value):
                out[f"{base}/{measure}/{label}"] = value
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
    test_patients: Sequence[Any] | None = None,
    test_studies: Sequence[Any] | None = None,
    val_studies: Sequence[Any] | None = None,
    threshold_method: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
    n_bootstrap: int = DEFAULT_RESAMPLES,
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
    test_patients
        Patient of each test row: the bootstrap resamples patients (each row its own
        patient if None).
    test_studies
        Study of each test row: makes the headline table study-level (the maximum
        probability over the study's images, as the service scores a study), with the
        image-level table beside it.
    val_studies
        Study of each validation row, so study-level thresholds are chosen on
        study-level validation scores; image-level thresholds are used if None.
    threshold_method, target_sensitivity
        See :func:`~medai.training.evaluation.metrics.choose_threshold`.
    n_bootstrap, confidence, seed
        See :func:`~medai.training.evaluation.bootstrap.bootstrap_auroc`; sensitivity
        and specificity get Wilson intervals of the same ``confidence``.
    n_bins
        Calibration bins.
    plot_dir
        Where to write a reliability diagram and a ROC curve (with the operating point)
        per label, for the pooled test set at the headline level; None for none.

    Returns
    -------
    EvaluationResult
    """
    n_labels = len(labels)
    vt, vp = _matrix(val_true, n_labels), _matrix(val_prob, n_labels)
    tt, tp = _matrix(test_true, n_labels), _matrix(test_prob, n_labels)
    if vt.shape != vp.shape or tt.shape != tp.shape:
        raise ValueError("labels and probabilities must have the same shape")
    rows = tt.shape[0]
    sites = _ids(test_sites, rows, "sites", np.full(rows, ALL_SITES))
    patients = _ids(test_patients, rows, "patients", np.arange(rows).astype(str))
    studies = None if test_studies is None else _ids(test_studies, rows, "studies", None)
    settings = _Settings(threshold_method, target_sensitivity, n_bootstrap, confidence, n_bins)
    image = _Level("image", tt, tp, sites, patients, vt, vp)
    image_table, warnings = _tabulate(labels, image, settings, seed, test_sites)
    if studies is None:
        _log_warnings(warnings)
        plots = _plots(labels, image, image_table, settings, plot_dir)
        return EvaluationResult(image_table, plots, warnings=warnings)
    st, sp, keys = study_level(tt, tp, studies)
    first = {key: i for i, key in reversed(list(enumerate(studies.tolist())))}
    index = np.asarray([first[key] for key in keys.tolist()], dtype=np.int64)
    if val_studies is not None:
        vt, vp, _ = study_level(vt, vp, _ids(val_studies, vt.shape[0], "val studies", None))
    study = _Level("study", st, sp, sites[index], patients[index], vt, vp)
    table, warnings = _tabulate(labels, study, settings, seed, test_sites)
    _log_warnings(warnings)  # the headline's: the image level's would repeat most of them
    return EvaluationResult(
        table, _plots(labels, study, table, settings, plot_dir), image_table, warnings
    )


@dataclass(frozen=True)
class _Settings:
    threshold_method: Literal["youden", "sensitivity"]
    target_sensitivity: float
    n_bootstrap: int
    confidence: float
    n_bins: int


@dataclass(frozen=True)
class _Level:
    """The cases evaluated at one level (image or study) and the validation to threshold on."""

    name: str
    true: Array
    prob: Array
    sites: npt.NDArray[Any]
    patients: npt.NDArray[Any]
    val_true: Array
    val_prob: Array


def _ids(
    values: Sequence[Any] | None, rows: int, what: str, default: npt.NDArray[Any] | None
) -> npt.NDArray[Any]:
    if values is None:
        if default is None:
            raise ValueError(f"no {what}")
        return default
    array = np.asarray([str(v) for v in values])
    if array.size != rows:
        raise ValueError(f"{array.size} {what} for {rows} rows")
    return array


def _tabulate(
    labels: Sequence[str],
    level: _Level,
    settings: _Settings,
    seed: int,
    test_sites: Sequence[Any] | None,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per label and site (pooled first) at ``level``, and the rows' warnings."""
    groups: list[tuple[str, npt.NDArray[np.bool_]]] = [
        (ALL_SITES, np.ones(level.true.shape[0], bool))
    ]
    if test_sites is not None:
        groups += [(s, level.sites == s) for s in sorted(set(level.sites.tolist()))]
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for column, label in enumerate(labels):
        known_val = ~np.isnan(level.val_true[:, column])
        threshold = choose_threshold(
            level.val_true[known_val, column],
            level.val_prob[known_val, column],
            method=settings.threshold_method,
            target_sensitivity=settings.target_sensitivity,
        )
        for site, members in groups:
            keep = members & ~np.isnan(level.true[:, column])
            row = _row(
                level.true[keep, column],
                level.prob[keep, column],
                level.patients[keep],
                threshold,
                settings,
                seed,
            )
            rows.append({"level": level.name, "label": label, "site": site, **row})
            warnings.extend(_warn(level.name, label, site, row))
    return pd.DataFrame(rows), warnings


def _log_warnings(warnings: list[str]) -> None:
    for message in warnings:
        _log.warning("evaluation: %s", message)


def _row(
    y: Array,
    p: Array,
    patients: npt.NDArray[Any],
    threshold: float,
    settings: _Settings,
    seed: int,
) -> dict[str, Any]:
    ci = bootstrap_auroc(
        y, p, patients, n_bootstrap=settings.n_bootstrap, confidence=settings.confidence, seed=seed
    )
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if math.isnan(threshold):
        tp = tn = 0
        sens = spec = (math.nan, math.nan, math.nan)
    else:
        positive = p >= threshold
        tp, tn = int((positive & (y == 1)).sum()), int((~positive & (y == 0)).sum())
        sens = (tp / n_pos if n_pos else math.nan, *wilson_interval(tp, n_pos, settings.confidence))
        spec = (tn / n_neg if n_neg else math.nan, *wilson_interval(tn, n_neg, settings.confidence))
    return {
        "n": int(y.size),
        "n_positive": n_pos,
        "n_patients": int(np.unique(patients).size),
        "auroc": ci.auroc,
        "auroc_low": ci.low,
        "auroc_high": ci.high,
        "auroc_percentile_low": ci.percentile_low,
        "auroc_percentile_high": ci.percentile_high,
        "design_effect": ci.design_effect,
        "threshold": threshold,
        "sensitivity": sens[0],
        "sensitivity_low": sens[1],
        "sensitivity_high": sens[2],
        "specificity": spec[0],
        "specificity_low": spec[1],
        "specificity_high": spec[2],
        "ece": expected_calibration_error(y, p, n_bins=settings.n_bins),
    }


def _warn(level: str, label: str, site: str, row: dict[str, Any]) -> list[str]:
    """The warnings a row deserves; counts only, never a case."""
    where = f"{label} at {site} ({level} level)"
    found: list[str] = []
    if row["n"] and row["n_positive"] < MIN_POSITIVES:
        found.append(
            f"{where}: {row['n_positive']} positive case(s), fewer than {MIN_POSITIVES}; "
            "its interval is unreliable"
        )
    for measure in ("auroc", "sensitivity", "specificity"):
        low, high = row[f"{measure}_low"], row[f"{measure}_high"]
        if not math.isnan(low) and low == high:
            found.append(f"{where}: zero-width {measure} interval [{low:.3f}, {high:.3f}]")
    low, high = row["auroc_percentile_low"], row["auroc_percentile_high"]
    if not math.isnan(low) and low == high:
        # The reported score interval keeps its width; the collapse still says the test
        # set is (nearly) separated, where any estimate of the spread is fragile.
        found.append(
            f"{where}: zero-width bootstrap percentile interval of the AUROC "
            f"[{low:.3f}, {high:.3f}] (every resample gives the same AUROC)"
        )
    return found


def _plots(
    labels: Sequence[str],
    level: _Level,
    table: pd.DataFrame,
    settings: _Settings,
    plot_dir: str | Path | None,
) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    if plot_dir is None:
        return plots
    pooled = table[table["site"] == ALL_SITES].set_index("label")
    for column, label in enumerate(labels):
        keep = ~np.isnan(level.true[:, column])
        y, p = level.true[keep, column], level.prob[keep, column]
        if not y.size:
            continue
        name = re.sub(r"[^0-9A-Za-z_.-]", "_", label)
        title = f"{label}: test ({level.name} level)"
        stem = f"reliability_{name}"
        plots[stem] = save_reliability_plot(
            y, p, Path(plot_dir) / f"{stem}.png", n_bins=settings.n_bins, title=title
        )
        if 0 < y.sum() < y.size:
            stem = f"roc_{name}"
            threshold = float(pooled.loc[label, "threshold"])
            plots[stem] = save_roc_plot(
                y, p, Path(plot_dir) / f"{stem}.png", threshold=threshold, title=title
            )
    return plots


def _matrix(values: npt.ArrayLike, n_labels: int) -> Array:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and n_labels == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != n_labels:
        raise ValueError(f"expected shape (N, {n_labels}), got {array.shape}")
    return array
