"""Evaluation metrics against hand-computed values, MONAI's AUROC and synthetic truths.

The interval's coverage of a known AUROC is in ``test_interval_coverage.py``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from medai.training.evaluation import (
    MIN_POSITIVES,
    auroc,
    bootstrap_auroc,
    choose_threshold,
    evaluate,
    expected_calibration_error,
    paired_auroc_difference,
    reliability_curve,
    roc_curve,
    save_reliability_plot,
    save_roc_plot,
    sensitivity_specificity,
    study_level,
    wilson_interval,
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
    ci = bootstrap_auroc(y, p, seed=0)
    assert ci.low < ci.auroc == auroc(y, p) < ci.high
    assert ci.percentile_low < ci.auroc < ci.percentile_high
    assert bootstrap_auroc(y, p, seed=0) == ci  # seeded
    assert (ci.n_bootstrap, ci.design_effect) == (2000, 1.0)  # each case its own patient
    y_big, p_big = _sample(3000, seed=2)
    big = bootstrap_auroc(y_big, p_big, seed=0)
    assert big.low < big.auroc < big.high
    assert big.high - big.low < (ci.high - ci.low) / 2
    none = bootstrap_auroc([0, 0], [0.1, 0.2])
    assert math.isnan(none.low) and math.isnan(none.high)


def test_bootstrap_resamples_patients_not_images() -> None:
    # Each patient's case copied 6 times: 6x the images, but no more information. An
    # image-level interval would shrink by about sqrt(6); the patient-level one must not.
    y, p = _sample(60, seed=11)
    once = bootstrap_auroc(y, p, np.arange(60), seed=1)
    patients = np.repeat(np.arange(60), 6)
    copies = bootstrap_auroc(np.repeat(y, 6), np.repeat(p, 6), patients, seed=1)
    assert copies.auroc == pytest.approx(once.auroc)
    assert copies.design_effect == pytest.approx(6.0, rel=0.1)
    assert copies.high - copies.low == pytest.approx(once.high - once.low, rel=0.1)
    as_if_independent = bootstrap_auroc(np.repeat(y, 6), np.repeat(p, 6), seed=1)
    assert as_if_independent.high - as_if_independent.low < (copies.high - copies.low) / 2
    # Strata: patients with a positive case, and the rest; every resample keeps both.
    assert (copies.n_positive_patients, copies.n_negative_patients) == (
        int(y.sum()),
        int(60 - y.sum()),
    )


def test_bootstrap_is_fast() -> None:
    # 2,000 resamples of 3,000 cases from 600 patients: both bootstraps (patients, cases).
    y, p = _sample(3000, seed=12)
    started = time.perf_counter()
    ci = bootstrap_auroc(y, p, np.arange(3000) // 5, n_bootstrap=2000, seed=0)
    elapsed = time.perf_counter() - started
    assert ci.low < ci.auroc < ci.high
    assert elapsed < 4.0, elapsed  # about 0.5 s on one free core; slack for shared CI


def test_paired_difference() -> None:
    y, p = _sample(200, seed=13)
    patients = np.arange(200) // 2
    same = paired_auroc_difference(y, p, p, patients)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.p_value == 1.0
    rng = np.random.default_rng(14)
    worse = p + rng.normal(scale=0.5, size=p.size)  # the same model with noise added
    diff = paired_auroc_difference(y, p, worse, patients, seed=3)
    assert diff.difference == pytest.approx(auroc(y, p) - auroc(y, worse))
    assert 0.0 < diff.low < diff.difference < diff.high
    assert diff.p_value < 0.05
    assert paired_auroc_difference(y, p, worse, patients, seed=3) == diff
    # Pairing: the paired interval is narrower than the two separate intervals suggest.
    a, b = bootstrap_auroc(y, p, patients), bootstrap_auroc(y, worse, patients)
    assert diff.high - diff.low < (a.high - a.low) + (b.high - b.low)
    assert math.isnan(paired_auroc_difference([1, 1], [0.2, 0.3], [0.1, 0.4]).difference)


def test_wilson_interval_known_values() -> None:
    # Newcombe (1998), Table I: 81/263 and the ends 0/10, 10/10; 5/10 by hand.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0  # exactly
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_study_level_is_the_maximum_over_images() -> None:
    true = np.array([[1, np.nan], [1, np.nan], [0, 0], [0, 1], [np.nan, np.nan]])
    prob = np.array([[0.2, 0.9], [0.7, 0.1], [0.3, 0.4], [0.1, 0.8], [0.6, 0.5]])
    studies = ["s2", "s2", "s1", "s1", "s3"]
    st, sp, keys = study_level(true, prob, studies)
    assert keys.tolist() == ["s2", "s1", "s3"]  # in the order of their first image
    np.testing.assert_array_equal(sp, [[0.7, 0.9], [0.3, 0.8], [0.6, 0.5]])
    np.testing.assert_array_equal(st, [[1, np.nan], [0, 1], [np.nan, np.nan]])


def test_separable_set_is_perfect() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert auroc(y, p) == 1.0
    threshold = choose_threshold(y, p)
    assert 0.3 < threshold <= 0.7
    assert sensitivity_specificity(y, p, threshold) == (1.0, 1.0)
    # Every resample is separated too: the percentile interval collapses to [1, 1], the
    # reported (score) interval does not, since 3 + 3 cases cannot show an AUROC of 1.
    ci = bootstrap_auroc(y, p)
    assert (ci.percentile_low, ci.percentile_high) == (1.0, 1.0)
    assert ci.low < 0.7 and ci.high == 1.0


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


def _studies(n_studies: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Studies of 1-3 images; a positive study has one clearly abnormal image at most."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=n_studies)
    study_true = (rng.random(n_studies) < 0.4).astype(float)
    studies = np.repeat([f"s{seed}-{i}" for i in range(n_studies)], sizes)
    true = np.repeat(study_true, sizes)
    first = np.r_[True, studies[1:] != studies[:-1]]
    # The finding shows on the study's first image only; the others look normal.
    score = rng.normal(size=true.size) + 1.5 * true * first
    patients = [f"p{seed}-{int(s.split('-')[1]) // 2}" for s in studies]  # 2 studies each
    return true[:, None], (1.0 / (1.0 + np.exp(-score)))[:, None], studies.tolist(), patients


def test_evaluate_study_level_is_the_headline() -> None:
    vt, vp, val_studies, _ = _studies(150, seed=21)
    tt, tp, test_studies, patients = _studies(120, seed=22)
    result = evaluate(
        ["effusion"],
        vt,
        vp,
        tt,
        tp,
        test_patients=patients,
        test_studies=test_studies,
        val_studies=val_studies,
    )
    row = result.table.iloc[0]
    st, sp, _ = study_level(tt, tp, test_studies)
    assert (row["level"], row["n"], row["n_patients"]) == ("study", 120, 60)
    assert row["auroc"] == pytest.approx(auroc(st[:, 0], sp[:, 0]))
    assert row["auroc_low"] < row["auroc"] < row["auroc_high"]
    # The threshold was chosen on study-level validation scores, as the service scores.
    sv, pv, _ = study_level(vt, vp, val_studies)
    assert row["threshold"] == choose_threshold(sv[:, 0], pv[:, 0])
    assert row["sensitivity_low"] <= row["sensitivity"] <= row["sensitivity_high"]
    assert row["specificity_low"] <= row["specificity"] <= row["specificity_high"]
    image = result.image_table.iloc[0]
    assert (image["level"], image["n"]) == ("image", len(test_studies))
    assert image["auroc"] == pytest.approx(auroc(tt[:, 0], tp[:, 0]))
    metrics = result.metrics()
    assert metrics["test/auroc/effusion"] == row["auroc"]
    assert metrics["test/auroc_low/effusion"] == row["auroc_low"]
    assert metrics["test/sensitivity_high/effusion"] == row["sensitivity_high"]
    assert metrics["test/image/auroc/effusion"] == image["auroc"]


def test_warnings_on_few_positives_and_zero_width(caplog: pytest.LogCaptureFixture) -> None:
    # Site a: 5 positives only. Site b: perfectly separated.
    y = np.array([1] * 5 + [0] * 20 + [1] * 12 + [0] * 12, dtype=float)
    rng = np.random.default_rng(31)
    p = np.r_[rng.random(25), np.linspace(0.6, 0.9, 12), np.linspace(0.1, 0.4, 12)]
    sites = ["a"] * 25 + ["b"] * 24
    with caplog.at_level(logging.WARNING, logger="medai.training.evaluation.report"):
        result = evaluate(["nodule"], y, p, y, p, test_sites=sites)
    few = [w for w in result.warnings if f"fewer than {MIN_POSITIVES}" in w]
    assert len(few) == 1 and "nodule at a" in few[0] and "5 positive" in few[0]
    flat = [w for w in result.warnings if "zero-width" in w]
    assert flat and all("nodule at b" in w for w in flat)
    assert set(result.warnings) <= {
        r.getMessage().removeprefix("evaluation: ") for r in caplog.records
    }
    # The reported interval at site b keeps a width: 12 + 12 cases cannot prove 1.0.
    b = result.table[result.table["site"] == "b"].iloc[0]
    assert b["auroc"] == 1.0 and b["auroc_low"] < 0.95
