"""Drift of one window of predictions from the reference: PSI and a two-sample test per feature.

Every feature is compared in two ways, because each alone misleads:

- the **population stability index** (PSI) says how *large* the shift is, on a fixed
  binning: the reference's categories plus ``other`` for a categorical feature, the
  reference's deciles for a numeric one (bins fixed by the reference, never by the
  window). ``0.1`` is the usual "look at it", ``0.25`` the usual "it moved".
- a **two-sample test** (chi-square of homogeneity over the same categories; Kolmogorov-
  Smirnov for numbers) says whether the shift could be chance. On a small window the PSI
  of an unchanged population is itself large (its expected value is about
  ``(bins - 1) * (1/n + 1/m)``), so a PSI alone would raise false alarms.

A feature *drifts* when its PSI reaches the alert threshold **and** the test rejects at
``p_value / features`` (Bonferroni over the features tested); *warns* likewise at the
warning threshold. The p-values are asymptotic (Kolmogorov's series for KS, the
Wilson-Hilferty approximation of the chi-square tail): fine for a monitoring signal,
not for a publication.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "OTHER",
    "STATUSES",
    "FeatureDrift",
    "Status",
    "Thresholds",
    "categorical_drift",
    "chi2_sf",
    "ks_2samp",
    "numeric_drift",
    "psi",
    "worst",
]

Status = Literal["unknown", "ok", "warn", "drift"]
STATUSES: tuple[Status, ...] = ("unknown", "ok", "warn", "drift")
OTHER = "other"
# Proportions are floored at this before the logarithm: an empty bin is not infinitely far.
_FLOOR = 1e-4
_MAX_CATEGORIES = 20


@dataclass(frozen=True)
class Thresholds:
    """When a feature warns or drifts (settings ``drift_*``)."""

    warn_psi: float
    alert_psi: float
    p_value: float
    min_samples: int


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one window against the reference."""

    feature: str
    kind: str  # "input" or "score"
    samples: int
    psi: float | None
    p_value: float | None
    status: Status


def psi(expected: Sequence[float], observed: Sequence[float]) -> float:
    """The population stability index of ``observed`` counts against ``expected`` counts."""
    e = np.asarray(expected, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    e = np.maximum(e / max(e.sum(), 1.0), _FLOOR)
    o = np.maximum(o / max(o.sum(), 1.0), _FLOOR)
    return float(np.sum((o - e) * np.log(o / e)))


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for a chi-square of ``df`` degrees (Wilson-Hilferty)."""
    if df <= 0:
        return 1.0
    if statistic <= 0:
        return 1.0
    a = 2.0 / (9.0 * df)
    z = ((statistic / df) ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _chi2_homogeneity(expected: Sequence[float], observed: Sequence[float]) -> float:
    table = np.asarray([expected, observed], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]  # a category neither sample has tells nothing
    if table.shape[1] < 2 or min(table.sum(axis=1)) == 0:
        return 1.0
    fitted = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - fitted) ** 2 / fitted))
    return chi2_sf(statistic, table.shape[1] - 1)


def ks_2samp(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: the statistic D and its asymptotic p-value."""
    a = np.sort(np.asarray(first, dtype=np.float64))
    b = np.sort(np.asarray(second, dtype=np.float64))
    if not len(a) or not len(b):
        return 0.0, 1.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.2:  # the series is 1 to many digits there (and converges slowly)
        return d, 1.0
    total = sum(2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, total))


def _status(psi_value: float, p_value: float, thresholds: Thresholds, tests: int) -> Status:
    significant = p_value < thresholds.p_value / max(1, tests)
    if significant and psi_value >= thresholds.alert_psi:
        return "drift"
    if significant and psi_value >= thresholds.warn_psi:
        return "warn"
    return "ok"


def categorical_drift(
    feature: str,
    reference: Mapping[str, int],
    values: Sequence[str],
    thresholds: Thresholds,
    tests: int,
) -> FeatureDrift:
    """``values`` (one per prediction) against the reference's category counts."""
    kept = [name for name, _ in Counter(reference).most_common(_MAX_CATEGORIES)]
    if len(values) < thresholds.min_samples or not kept:
        return FeatureDrift(feature, "input", len(values), None, None, "unknown")
    index = {name: i for i, name in enumerate(kept)}
    expected = [float(reference[name]) for name in kept] + [
        float(sum(v for k, v in reference.items() if k not in index))
    ]
    observed = [0.0] * (len(kept) + 1)
    for value in values:
        observed[index.get(value, len(kept))] += 1
    value_psi = psi(expected, observed)
    p = _chi2_homogeneity(expected, observed)
    return FeatureDrift(
        feature, "input", len(values), value_psi, p, _status(value_psi, p, thresholds, tests)
    )


def numeric_drift(
    feature: str,
    kind: str,
    reference: Sequence[float],
    values: Sequence[float],
    thresholds: Thresholds,
    tests: int,
) -> FeatureDrift:
    """``values`` against the reference values, binned at the reference's quantiles."""
    if len(values) < thresholds.min_samples or len(reference) < 2:
        return FeatureDrift(feature, kind, len(values), None, None, "unknown")
    ref = np.asarray(reference, dtype=np.float64)
    # Deciles, but at least ~10 reference values a bin: on a small reference, finer bins
    # only measure its sampling noise.
    bins = min(10, max(2, len(ref) // 10))
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    observed = np.bincount(
        np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right"),
        minlength=len(edges) + 1,
    )
    value_psi = psi(expected.tolist(), observed.tolist())
    _, p = ks_2samp(ref.tolist(), values)
    return FeatureDrift(
        feature, kind, len(values), value_psi, p, _status(value_psi, p, thresholds, tests)
    )


def worst(statuses: Sequence[Status]) -> Status:
    """The status of a group: its worst feature's; ``unknown`` if none was assessed."""
    assessed = [s for s in statuses if s != "unknown"]
    return max(assessed, key=STATUSES.index) if assessed else "unknown"
