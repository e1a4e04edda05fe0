"""Calibration of one label's probabilities: the reliability curve and its expected error."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd

from medai.training.evaluation.metrics import as_binary

__all__ = ["expected_calibration_error", "reliability_curve"]


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
    y, p = as_binary(y_true, y_prob)
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
