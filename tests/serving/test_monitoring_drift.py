"""The drift statistics: PSI, the two-sample tests (checked against SciPy), the statuses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from medai.serving.monitoring.drift import (
    Thresholds,
    categorical_drift,
    chi2_sf,
    ks_2samp,
    numeric_drift,
    psi,
    worst,
)

T = Thresholds(warn_psi=0.1, alert_psi=0.25, p_value=0.01, min_samples=20)


def test_psi_is_zero_for_the_same_proportions_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    small, large = psi([50, 50], [55, 45]), psi([50, 50], [90, 10])
    assert 0 < small < 0.1 < 0.25 < large
    assert np.isfinite(psi([10, 0], [0, 10]))  # empty bins are floored, not infinite


@pytest.mark.parametrize("df", [1, 2, 5, 12])
@pytest.mark.parametrize("x", [0.5, 3.0, 10.0, 30.0])
def test_chi2_tail_is_close_to_scipy(df: int, x: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), abs=0.02)


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.3, 1.0):
        a, b = rng.normal(size=150), rng.normal(loc=shift, size=80)
        d, p = ks_2samp(a.tolist(), b.tolist())
        expected = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(expected.statistic)
        assert p == pytest.approx(expected.pvalue, abs=0.02)


def test_a_numeric_feature_drifts_only_when_large_and_significant() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=400).tolist()
    same = numeric_drift("x", "input", reference, rng.normal(size=200).tolist(), T, 1)
    moved = numeric_drift("x", "input", reference, rng.normal(1.5, size=200).tolist(), T, 1)
    few = numeric_drift("x", "input", reference, rng.normal(3.0, size=19).tolist(), T, 1)
    assert same.status == "ok" and moved.status == "drift" and few.status == "unknown"
    assert moved.psi is not None and moved.psi > 0.25 and moved.p_value is not None
    assert moved.p_value < 1e-6


def test_an_unseen_category_falls_in_other_and_drifts() -> None:
    reference = {"FUJIFILM": 10, "SIEMENS": 10, "PHILIPS": 10}
    same = categorical_drift(
        "manufacturer", reference, ["FUJIFILM", "SIEMENS", "PHILIPS"] * 10, T, 1
    )
    other = categorical_drift("manufacturer", reference, ["AGFA"] * 30, T, 1)
    assert same.status == "ok" and same.psi == pytest.approx(0.0)
    assert other.status == "drift"


def test_worst_status() -> None:
    assert worst(["ok", "unknown", "warn"]) == "warn"
    assert worst(["ok", "drift", "warn"]) == "drift"
    assert worst(["unknown", "unknown"]) == "unknown"
    assert worst([]) == "unknown"
