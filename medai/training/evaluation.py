"""Evaluate a multi-label finding model: AUROC with bootstrap CIs, operating point, calibration.

The operating threshold of each label is chosen on the validation set (Youden's J, or
the highest threshold that reaches a target sensitivity) and then applied unchanged to
the test set, overall and per site: a threshold tuned on test data would overstate
sensitivity and specificity. Calibration is the expected calibration error over
equal-width probability bins, with a reliability diagram per label.

Results are a tidy :class:`pandas.DataFrame` (one row per label and site, ``site="all"``
for the pooled test set), a flat ``{name: float}`` dictionary for
``mlflow.log_metrics``, and PNG files for ``mlflow.log_artifact``.
"""

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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "EvaluationResult",
    "auroc",
    "bootstrap_auroc_ci",
    "choose_threshold",
    "evaluate",
    "expected_calibration_error",
    "reliability_curve",
    "roc_curve",
    "save_reliability_plot",
    "save_roc_plot",
    "sensitivity_specificity",
]

Array = npt.NDArray[np.float64]
ALL_SITES = "all"


def _as_binary(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[Array, Array]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values, y_score {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1 (drop missing labels first)")
    return y, s


def _weighted_auroc(y: Array, s: Array, weights: Array) -> Array:
    """AUROC of one sample under each row of ``weights`` (shape ``(B, n)``), ties counted half.

    A bootstrap resample is the original sample with each item counted as often as it
    was drawn, so every resample's AUROC comes from the same sort: per distinct score,
    the (weighted) positives times the negatives below it, plus half those tied with it.
    """
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted, w = s[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    pos = np.add.reduceat(w * y_sorted, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - y_sorted), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    pairs = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: Array = np.where(total > 0, pairs / np.where(total > 0, total, 1.0), np.nan)
    return result


def auroc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count one half).

    Parameters
    ----------
    y_true
        0/1 labels.
    y_score
        Scores, higher meaning more likely positive.

    Returns
    -------
    float
        NaN when only one class is present.
    """
    y, s = _as_binary(y_true, y_score)
    if y.size == 0:
        return math.nan
    return float(_weighted_auroc(y, s, np.ones((1, y.size)))[0])


def bootstrap_auroc_ci(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 200,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUROC.

    Parameters
    ----------
    y_true, y_score
        As in :func:`auroc`.
    n_bootstrap
        Number of resamples (with replacement, of the same size).
    confidence
        Coverage of the interval.
    seed
        Seed of the resampling; the same seed gives the same interval.
    chunk
        Resamples computed at once (bounds memory to ``chunk * n`` floats).

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN when only one class is present. Resamples that happen to
        hold one class only are left out.
    """
    y, s = _as_binary(y_true, y_score)
    n = y.size
    if n == 0 or y.min() == y.max():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values: list[Array] = []
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(size, n))
        counts = np.zeros((size, n))
        np.add.at(counts, (np.arange(size)[:, None], draws), 1.0)
        values.append(_weighted_auroc(y, s, counts))
    aucs = np.concatenate(values)
    aucs = aucs[~np.isnan(aucs)]
    if aucs.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(aucs, [tail, 100.0 - tail])
    return float(low), float(high)


def choose_threshold(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    *,
    method: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
) -> float:
    """Choose an operating threshold (positive when ``score >= threshold``).

    Parameters
    ----------
    y_true, y_score
        Validation labels and scores.
    method
        ``"youden"``: maximise sensitivity + specificity - 1 (the highest such threshold
        on ties); ``"sensitivity"``: the highest threshold whose sensitivity reaches
        ``target_sensitivity`` (a screening operating point).
    target_sensitivity
        For ``method="sensitivity"``.

    Returns
    -------
    float
        NaN when only one class is present.
    """
    y, s = _as_binary(y_true, y_score)
    n_pos, n_neg = y.sum(), (1.0 - y).sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Scores in descending order; at the last item of each run of equal scores, the
    # cumulative counts are the true and false positives at that threshold.
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    candidates = s_desc[last]  # descending: sensitivity grows along the array
    sensitivity = np.cumsum(y_desc)[last] / n_pos
    specificity = 1.0 - np.cumsum(1.0 - y_desc)[last] / n_neg
    if method == "youden":
        return float(candidates[int(np.argmax(sensitivity + specificity - 1.0))])
    if method == "sensitivity":
        reached = np.flatnonzero(sensitivity >= target_sensitivity - 1e-12)
        return float(candidates[reached[0]])
    raise ValueError(f"unknown threshold method {method!r}")


def sensitivity_specificity(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float
) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` is called positive.

    Returns
    -------
    tuple of float
        ``(sensitivity, specificity)``; NaN for one that has no cases.
    """
    y, s = _as_binary(y_true, y_score)
    positive = s >= threshold
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    sens = float((positive & (y == 1)).sum() / n_pos) if n_pos else math.nan
    spec = float((~positive & (y == 0)).sum() / n_neg) if n_neg else math.nan
    return sens, spec


def reliability_curve(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, *, n_bins: int = 10
) -> pd.DataFrame:
    """Per equal-width probability bin: count, mean predicted probability, observed rate.

    Returns
    -------
    pandas.DataFrame
        Columns ``bin_low``, ``bin_high``, ``count``, ``mean_predicted``, ``observed``
        (NaN means for empty bins).
    """
    y, p = _as_binary(y_true, y_prob)
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1] (apply the sigmoid first)")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]], the first also 0 (as scikit-learn and most papers).
    index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=n_bins) / counts
        observed = np.bincount(index, weights=y, minlength=n_bins) / counts
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": counts.astype(np.int64),
            "mean_predicted": mean_p,
            "observed": observed,
        }
    )


def expected_calibration_error(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, *, n_bins: int = 10
) -> float:
    """ECE: the count-weighted mean of ``|observed - mean predicted|`` over equal-width bins.

    Returns
    -------
    float
        NaN for an empty sample.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    total = int(curve["count"].sum())
    if total == 0:
        return math.nan
    used = curve[curve["count"] > 0]
    gaps = (used["observed"] - used["mean_predicted"]).abs() * used["count"]
    return float(gaps.sum() / total)


def save_reliability_plot(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    path: str | Path,
    *,
    n_bins: int = 10,
    title: str = "",
) -> Path:
    """Write a reliability diagram (observed rate against predicted probability) as PNG.

    The figure is drawn on matplotlib's Agg canvas directly, without pyplot, so it
    neither needs a display nor touches global plotting state (safe in threads).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    ece = expected_calibration_error(y_true, y_prob, n_bins=n_bins)
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    used = curve[curve["count"] > 0]
    axes.plot(used["mean_predicted"], used["observed"], marker="o", label=f"model (ECE {ece:.3f})")
    width = 1.0 / n_bins
    axes.bar(
        curve["bin_low"] + width / 2,
        curve["count"] / max(int(curve["count"].sum()), 1),
        width=width * 0.9,
        alpha=0.25,
        color="tab:blue",
        label="share of cases",
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("predicted probability")
    axes.set_ylabel("observed frequency")
    if title:
        axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def roc_curve(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[Array, Array, Array]:
    """False and true positive rates at each distinct threshold, from (0, 0) to (1, 1).

    Returns
    -------
    tuple of numpy.ndarray
        ``(fpr, tpr, thresholds)``; the first point has threshold ``+inf``.
    """
    y, s = _as_binary(y_true, y_score)
    n_pos, n_neg = y.sum(), (1.0 - y).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes")
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tpr = np.r_[0.0, np.cumsum(y_desc)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(1.0 - y_desc)[last] / n_neg]
    return fpr, tpr, np.r_[np.inf, s_desc[last]]


def save_roc_plot(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """Write the ROC curve as PNG, marking the operating point at ``threshold`` if given.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    fpr, tpr, _ = roc_curve(y_true, y_score)
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.plot(fpr, tpr, label=f"model (AUROC {auroc(y_true, y_score):.3f})")
    if threshold is not None and not math.isnan(threshold):
        sens, spec = sensitivity_specificity(y_true, y_score, threshold)
        axes.plot([1.0 - spec], [sens], marker="o", color="tab:red", label="operating point")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    if title:
        axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


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
