"""The AUROC interval covers a known true AUROC about 95 % of the time, clustered or not.

Scores are binormal: a case of a positive patient scores ``d + noise``, a negative one
``noise``, with unit variance, so the true (population) AUROC of two cases from different
patients is ``Phi(d / sqrt(2))``. With 8 images per patient, half of the variance is a
patient effect the images share: they are not independent, and an interval that treats
them as such is too narrow. Each draw is a fresh test set of 10 positive and 24 negative
patients; the 95 % interval must cover the truth in 93-97 % of 500 draws.

The plain percentile bootstrap is checked too, to show the test can fail: it covers far
less at a true AUROC of 0.99 (the test set is often perfectly separated, and its
percentile interval is then [1, 1]).

Cost: independent cases take about 5 ms a draw and always run (500 draws per setting);
correlated images take about 25 ms a draw (two bootstraps of 272 cases): 200 draws always
run with a wider window (binomial spread at 200 draws), the full 500 are marked slow.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from medai.training.evaluation import bootstrap_auroc

N_POSITIVE_PATIENTS = 10
N_NEGATIVE_PATIENTS = 24


def _coverage(true_auroc: float, images: int, shared: float, draws: int) -> tuple[float, float]:
    """Share of draws whose interval covers ``true_auroc``: (ours, plain percentile)."""
    separation = math.sqrt(2.0) * NormalDist().inv_cdf(true_auroc)
    strata = np.r_[np.ones(N_POSITIVE_PATIENTS), np.zeros(N_NEGATIVE_PATIENTS)]
    patients = np.repeat(np.arange(strata.size), images)
    y = strata[patients]
    rng = np.random.default_rng(20261206)
    covered = percentile_covered = 0
    for draw in range(draws):
        effect = rng.normal(size=strata.size) * math.sqrt(shared)
        noise = rng.normal(size=y.size) * math.sqrt(1.0 - shared)
        scores = separation * y + effect[patients] + noise
        ci = bootstrap_auroc(y, scores, patients, n_bootstrap=2000, seed=draw)
        covered += ci.low <= true_auroc <= ci.high
        percentile_covered += ci.percentile_low <= true_auroc <= ci.percentile_high
    return covered / draws, percentile_covered / draws


@pytest.mark.parametrize("true_auroc", [0.85, 0.99])
def test_coverage_with_independent_cases(true_auroc: float) -> None:
    coverage, percentile = _coverage(true_auroc, images=1, shared=0.0, draws=500)
    assert 0.93 <= coverage <= 0.97, coverage
    if true_auroc == 0.99:
        assert percentile < 0.80  # the percentile interval would fail this test


@pytest.mark.parametrize("true_auroc", [0.85, 0.99])
def test_coverage_with_correlated_images_quick(true_auroc: float) -> None:
    coverage, percentile = _coverage(true_auroc, images=8, shared=0.5, draws=200)
    # 200 draws: the binomial spread of a 95 % coverage is 1.5 points; 3 of them either side.
    assert 0.905 <= coverage <= 0.995, coverage
    assert percentile < coverage


@pytest.mark.slow
@pytest.mark.parametrize("true_auroc", [0.85, 0.99])
def test_coverage_with_correlated_images(true_auroc: float) -> None:
    coverage, _ = _coverage(true_auroc, images=8, shared=0.5, draws=500)
    assert 0.93 <= coverage <= 0.97, coverage
