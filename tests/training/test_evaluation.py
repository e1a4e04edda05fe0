"""Evaluation metrics against hand-computed values, MONAI's AUROC and synthetic truths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from medai.training.evaluation import (
    auroc,
    bootstrap_auroc_ci,
    choose_threshold,
    evaluate,
    expected_calibration_error,
    reliability_curve,
    roc_curve,
    save_reliability_plot,
    save_roc_plot,
    sensitivity_specificity,
)


def _sample(n: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    score = rng.normal(size=n) + shift * y
    return y, 1.0 / (1.0 + np.exp(-score))


def test_auroc_by_hand_and_against_monai() -> None:
    # Pairs (positive, negative): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4: 3 of 4.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half: (0.5 + 1 + 2) / 4.
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    y, p = _sample(500, seed=1)
    expected = compute_roc_auc(torch.as_tensor(p), torch.as_tensor(y))
    assert auroc(y, p) == pytest.approx(float(expected), abs=1e-9)
    # Ties in quantized scores too.
    q = np.round(p, 1)
    assert auroc(y, q) == pytest.approx(
        float(compute_roc_auc(torch.as_tensor(q), torch.as_tensor(y))), abs=1e-9
    )


def test_bootstrap_ci_contains_estimate_and_narrows() -> None:
    y, p = _sample(150, seed=2)
    low, high = bootstrap_auroc_ci(y, p, n_bootstrap=300, seed=0)
    assert low < auroc(y, p) < high
    assert bootstrap_auroc_ci(y, p, n_bootstrap=300, seed=0) == (low, high)  # seeded
    y_big, p_big = _sample(3000, seed=2)
    low_big, high_big = bootstrap_auroc_ci(y_big, p_big, n_bootstrap=300, seed=0)
    assert low_big < auroc(y_big, p_big) < high_big
    assert high_big - low_big < (high - low) / 2
    assert all(math.isnan(v) for v in bootstrap_auroc_ci([0, 0], [0.1, 0.2]))


def test_separable_set_is_perfect() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert auroc(y, p) == 1.0
    threshold = choose_threshold(y, p)
    assert 0.3 < threshold <= 0.7
    assert sensitivity_specificity(y, p, threshold) == (1.0, 1.0)
    assert bootstrap_auroc_ci(y, p, n_bootstrap=100) == (1.0, 1.0)


def test_threshold_for_target_sensitivity() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    # The highest threshold reaching 75% sensitivity keeps 3 of 4 positives: 0.6.
    assert choose_threshold(y, p, method="sensitivity", target_sensitivity=0.75) == 0.6
    assert choose_threshold(y, p, method="sensitivity", target_sensitivity=1.0) == 0.3
    sens, spec = sensitivity_specificity(y, p, 0.6)
    assert (sens, spec) == (0.75, 0.75)


def test_calibration() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(100_000)
    y = (rng.random(p.size) < p).astype(float)  # perfectly calibrated by construction
    assert expected_calibration_error(y, p) < 0.01
    # Overconfident probabilities are miscalibrated.
    assert expected_calibration_error(y, np.clip((p - 0.5) * 2 + 0.5, 0, 1)) > 0.1
    # Hand example: bins (0.0-0.5] holds [0.2, 0.4] (mean 0.3, observed 0.5),
    # (0.5-1.0] holds [0.8, 0.8] (mean 0.8, observed 1.0): ECE = 0.5*0.2 + 0.5*0.2.
    ece = expected_calibration_error([0, 1, 1, 1], [0.2, 0.4, 0.8, 0.8], n_bins=2)
    assert ece == pytest.approx(0.2)
    curve = reliability_curve([0, 1, 1, 1], [0.2, 0.4, 0.8, 0.8], n_bins=2)
    assert curve["count"].tolist() == [2, 2]


def test_plots_are_written(tmp_path: Path) -> None:
    y, p = _sample(300, seed=4)
    out = save_reliability_plot(y, p, tmp_path / "plots" / "r.png", title="effusion")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    out = save_roc_plot(y, p, tmp_path / "roc.png", threshold=0.5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000


def test_roc_curve_ends_and_area() -> None:
    y, p = _sample(200, seed=9)
    fpr, tpr, thresholds = roc_curve(y, p)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, p))


def test_evaluate_with_sites(tmp_path: Path) -> None:
    labels = ["effusion", "nodule/mass"]
    yv0, pv0 = _sample(200, seed=5, shift=2.0)
    yv1, pv1 = _sample(200, seed=6, shift=0.5)
    yt0, pt0 = _sample(300, seed=7, shift=2.0)
    yt1, pt1 = _sample(300, seed=8, shift=0.5)
    test_true = np.stack([yt0, yt1], axis=1)
    test_true[0, 1] = np.nan  # an unknown label is left out of that label's metrics
    sites = np.where(np.arange(300) % 3 == 0, "site-b", "site-a")
    result = evaluate(
        labels,
        np.stack([yv0, yv1], axis=1),
        np.stack([pv0, pv1], axis=1),
        test_true,
        np.stack([pt0, pt1], axis=1),
        test_sites=sites.tolist(),
        n_bootstrap=100,
        plot_dir=tmp_path,
    )
    table = result.table
    assert len(table) == 2 * 3 and set(table["site"]) == {"all", "site-a", "site-b"}
    pooled = table[table["site"] == "all"].set_index("label")
    assert pooled.loc["effusion", "n"] == 300 and pooled.loc["nodule/mass", "n"] == 299
    assert pooled.loc["effusion", "auroc"] > pooled.loc["nodule/mass", "auroc"]
    for row in table.itertuples():
        assert row.auroc_low <= row.auroc <= row.auroc_high
    # The same validation threshold is used for every site.
    assert table.groupby("label")["threshold"].nunique().eq(1).all()
    site_b = table[(table["site"] == "site-b") & (table["label"] == "effusion")].iloc[0]
    keep = sites == "site-b"
    assert site_b["auroc"] == pytest.approx(auroc(yt0[keep], pt0[keep]))
    metrics = result.metrics()
    assert metrics["test/auroc/effusion"] == pooled.loc["effusion", "auroc"]
    assert "test/site/site-b/sensitivity/nodule_mass" in metrics
    assert "test/auroc/macro" in metrics
    assert set(result.plots) == {
        "reliability_effusion",
        "reliability_nodule_mass",
        "roc_effusion",
        "roc_nodule_mass",
    }
    assert all(path.stat().st_size > 0 for path in result.plots.values())
