"""Closed-form confidence intervals: Wilson for proportions, a score-type interval for AUROC.

Both are *score* intervals: the variance is taken at the candidate value rather than at
the estimate, so they keep a sensible width when the estimate sits at 0 or 1 (a
sensitivity of 10/10, an AUROC of 1.0), where a Wald or percentile-bootstrap interval
collapses to a point and covers nothing but that point.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = ["auroc_score_interval", "auroc_variance", "normal_quantile", "wilson_interval"]

_BISECTION_STEPS = 60  # halves [0, 1] down to ~1e-18, below float64's resolution at 1.0


def normal_quantile(confidence: float) -> float:
    """The two-sided standard normal quantile of ``confidence`` (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    Parameters
    ----------
    successes
        Number of successes (e.g. true positives for a sensitivity).
    n
        Number of trials (e.g. positives).
    confidence
        Coverage of the interval.

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN for ``n == 0``.
    """
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    z = normal_quantile(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    # At the ends the limit is exactly 0 or 1 (10/10 cannot exclude 1); rounding aside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@functools.lru_cache(maxsize=1)
def _binormal_table() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(1 - theta, var)`` on a grid of separations ``d`` of the equal-variance binormal model.

    With negatives ``Y ~ N(0, 1)`` and positives ``X ~ N(d, 1)``, a positive's placement
    ``g(Y) = P(X > Y | Y)`` has mean ``theta`` and variance ``Q1 - theta^2`` (Hanley and
    McNeil's ``Q1``; ``Q2`` is the same by symmetry). Both are sums over a grid of ``Y``
    of ``1 - g = Phi(Y - d)``, the small tail, so they keep their precision as theta
    nears 1.
    """
    step = 0.005
    offsets = np.arange(-2400, 2401)  # y in [-12, 12]
    y = offsets * step
    density = np.exp(-0.5 * y * y) * step / math.sqrt(2.0 * math.pi)
    # Phi on the grid of differences y - d (d a multiple of 10 steps, 0 <= d <= 8.5).
    diffs = np.arange(-2400 - 1700, 2401) * step
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in diffs])
    tails, variances = [], []
    for shift in range(0, 1701, 10):
        tail = cdf[offsets + 4100 - shift]
        mean = float(density @ tail)
        tails.append(mean)
        variances.append(max(float(density @ (tail * tail)) - mean * mean, 0.0))
    return np.asarray(tails[::-1]), np.asarray(variances[::-1])


def auroc_variance(
    theta: npt.ArrayLike, n_positive: float, n_negative: float
) -> npt.NDArray[np.float64]:
    """Variance of an AUROC estimate as a function of the true AUROC ``theta``.

    Hanley and McNeil's (1982) formula
    ``[theta(1 - theta) + (m - 1)(Q1 - theta^2) + (n - 1)(Q2 - theta^2)] / (m n)`` with
    ``Q1`` and ``Q2`` those of the equal-variance binormal model of that ``theta`` (the
    usual parametric ROC model). Hanley and McNeil's own exponential ``Q1``, ``Q2``
    overstate the variance near 1, which made the interval cover about 0.98 at 0.99.

    Parameters
    ----------
    theta
        AUROC value(s) in [0, 1].
    n_positive, n_negative
        (Effective) numbers of positive and negative cases.
    """
    t = np.asarray(theta, dtype=np.float64)
    tails, variances = _binormal_table()
    # The model is symmetric in the two classes: theta and 1 - theta share a variance.
    tail = np.minimum(t, 1.0 - t)
    placement = np.interp(tail, tails, variances, left=0.0, right=float(variances[-1]))
    result: npt.NDArray[np.float64] = (
        t * (1.0 - t) + (n_positive + n_negative - 2.0) * placement
    ) / (n_positive * n_negative)
    return result


def auroc_score_interval(
    estimate: float,
    n_positive: float,
    n_negative: float,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Score-type interval of an AUROC (Newcombe 2006): all ``theta`` not rejected at ``z``.

    The interval holds every ``theta`` with ``(estimate - theta)^2 <= z^2 V(theta)``,
    ``V`` from :func:`auroc_variance`; found by bisection on each side of the estimate.

    Parameters
    ----------
    estimate
        The AUROC estimate.
    n_positive, n_negative
        Effective numbers of positive and negative cases (may be fractional: the counts
        divided by a design effect when cases are correlated).
    confidence
        Coverage of the interval.

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN if the estimate is NaN or a count is below 1.
    """
    if math.isnan(estimate) or n_positive < 1.0 or n_negative < 1.0:
        return math.nan, math.nan
    z2 = normal_quantile(confidence) ** 2

    def outside(theta: float) -> bool:
        return bool(
            (estimate - theta) ** 2 > z2 * float(auroc_variance(theta, n_positive, n_negative))
        )

    # Below the estimate: [out, in] brackets the lower limit; above: [in, out] the upper.
    low_out, low_in = 0.0, estimate
    high_in, high_out = estimate, 1.0
    if not outside(0.0):
        low_in = 0.0
    if not outside(1.0):
        high_in = 1.0
    for _ in range(_BISECTION_STEPS):
        if low_in > 0.0:
            middle = (low_out + low_in) / 2.0
            low_out, low_in = (middle, low_in) if outside(middle) else (low_out, middle)
        if high_in < 1.0:
            middle = (high_in + high_out) / 2.0
            high_in, high_out = (high_in, middle) if outside(middle) else (middle, high_out)
    return low_in, high_in
