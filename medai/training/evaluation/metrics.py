"""Discrimination of one label's scores: (weighted) AUROC, ROC curve, operating point.

Intervals are in :mod:`~medai.training.evaluation.bootstrap` and
:mod:`~medai.training.evaluation.intervals`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Array",
    "as_binary",
    "auroc",
    "choose_threshold",
    "roc_curve",
    "sensitivity_specificity",
    "weighted_auroc",
]

Array = npt.NDArray[np.float64]


def as_binary(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[Array, Array]:
    """Labels and scores as flat float arrays; raises ValueError unless labels are 0/1."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values, y_score {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1 (drop missing labels first)")
    return y, s


def weighted_auroc(y: Array, s: Array, weights: Array) -> Array:
    """AUROC of one sample under each row of ``weights`` (shape ``(B, n)``), ties counted half.

    A bootstrap resample is the original sample with each item counted as often as it
    was drawn, so every resample's AUROC comes from the same sort: each positive pairs
    with the (weighted) negatives scored below it, and half those tied with it, read off
    the negatives' cumulative weights at positions found once.
    """
    positive = y == 1
    neg_scores = np.sort(s[~positive], kind="mergesort")
    order = np.argsort(s[~positive], kind="mergesort")
    pos_scores = s[positive]
    below = np.searchsorted(neg_scores, pos_scores, side="left")
    not_above = np.searchsorted(neg_scores, pos_scores, side="right")
    w_pos, w_neg = weights[:, positive], weights[:, ~positive][:, order]
    cumulative = np.zeros((weights.shape[0], neg_scores.size + 1))
    np.cumsum(w_neg, axis=1, out=cumulative[:, 1:])
    under = cumulative[:, below] + 0.5 * (cumulative[:, not_above] - cumulative[:, below])
    pairs = (w_pos * under).sum(axis=1)
    total = w_pos.sum(axis=1) * cumulative[:, -1]
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
    y, s = as_binary(y_true, y_score)
    if y.size == 0:
        return math.nan
    return float(weighted_auroc(y, s, np.ones((1, y.size)))[0])


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
    y, s = as_binary(y_true, y_score)
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
    y, s = as_binary(y_true, y_score)
    positive = s >= threshold
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    sens = float((positive & (y == 1)).sum() / n_pos) if n_pos else math.nan
    spec = float((~positive & (y == 0)).sum() / n_neg) if n_neg else math.nan
    return sens, spec


def roc_curve(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[Array, Array, Array]:
    """False and true positive rates at each distinct threshold, from (0, 0) to (1, 1).

    Returns
    -------
    tuple of numpy.ndarray
        ``(fpr, tpr, thresholds)``; the first point has threshold ``+inf``.
    """
    y, s = as_binary(y_true, y_score)
    n_pos, n_neg = y.sum(), (1.0 - y).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes")
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tpr = np.r_[0.0, np.cumsum(y_desc)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(1.0 - y_desc)[last] / n_neg]
    return fpr, tpr, np.r_[np.inf, s_desc[last]]
