"""The synthetic campaign's known ceiling: latent truth per patient, noisy sheets, ideal AUROC."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from medai.dicom.cli import DifficultyName, register
from medai.dicom.synth import DIFFICULTIES, SynthResult, difficulty_for, generate
from medai.dicom.synth.ideal_observer import auroc, ideal_score, population_auroc
from medai.dicom.synth.latent import FINDINGS, first_state, sheet_label, study_latent

SITES = ("site-a", "site-b", "site-c")


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out = tmp_path_factory.mktemp("hard")
    return generate(out, studies=240, seed=8, sites=SITES, image_size=64, ct_slices=0)


@pytest.fixture(scope="module")
def truth(hard: SynthResult) -> dict[str, Any]:
    assert hard.ground_truth is not None
    document: dict[str, Any] = json.loads(hard.ground_truth.read_text(encoding="utf-8"))
    return document


def test_default_difficulty_has_an_ideal_auroc_between_080_and_095(
    hard: SynthResult, truth: dict[str, Any]
) -> None:
    assert hard.difficulty == truth["difficulty"] == "hard"
    assert hard.ground_truth == hard.label_sheets["site-a"].parent / "ground_truth.json"
    for finding in FINDINGS:
        entry = truth["findings"][finding]
        assert 0.80 <= entry["ideal_auroc"] <= 0.95, (finding, entry["ideal_auroc"])
        # The value on the 240 studies drawn moves with the draw, but not far.
        assert abs(entry["ideal_auroc_sample"] - entry["ideal_auroc"]) < 0.08, finding
        assert 0.1 < entry["prevalence"] < 0.5, finding
        for site in SITES:
            by_site = entry["by_site"][site]
            assert 0.75 < by_site["ideal_auroc"] < 0.97, (finding, site)
            assert by_site["studies"] == 80


def test_other_difficulties_are_easier_and_tiny_is_exact() -> None:
    ceilings = {
        name: population_auroc(d, range(3), studies_per_site=2000)
        for name, d in DIFFICULTIES.items()
    }
    for finding in FINDINGS:
        hard, moderate, tiny = (ceilings[n][finding]["all"] for n in ("hard", "moderate", "tiny"))
        assert hard < moderate < tiny == 1.0, finding
    assert {d.value for d in DifficultyName} == set(DIFFICULTIES)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        difficulty_for("trivial")


def test_ground_truth_joins_the_sheets_and_holds_no_phi(
    hard: SynthResult, truth: dict[str, Any]
) -> None:
    studies = truth["studies"]
    assert set(studies) == {r.study_instance_uid for r in hard.study_records}
    rows = 0
    for site, sheet in hard.label_sheets.items():
        with sheet.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                entry = studies[row["study_instance_uid"]]
                assert entry["site"] == site
                assert entry["label"] == {f: row[f] == "1" for f in FINDINGS}
                rows += 1
    assert rows == len(studies)
    text = hard.ground_truth.read_text(encoding="utf-8")  # type: ignore[union-attr]
    assert not [value for value in hard.phi_values if value in text]
    difficulty = difficulty_for("hard")
    for record in hard.study_records:
        assert record.latent is not None
        site_index = SITES.index(record.site)
        for finding in FINDINGS:
            expected = ideal_score(difficulty, finding, record.latent.state, site_index)
            got = studies[record.study_instance_uid]["ideal_score"][finding]
            assert math.isclose(got, expected, abs_tol=1e-6)


def test_anatomy_is_the_patients_and_findings_persist(hard: SynthResult) -> None:
    by_patient = defaultdict(list)
    for record in hard.study_records:
        by_patient[record.patient_id].append(record)
    followed = [sorted(rs, key=lambda r: r.study_date) for rs in by_patient.values() if len(rs) > 1]
    assert len(followed) >= 10
    for records in followed:
        states = [r.latent.state for r in records if r.latent is not None]
        assert len({s.anatomy for s in states}) == 1
        nodules = [s.nodule for s in states]
        if nodules[0] is not None:  # a nodule stays where it was and does not shrink
            assert all(n is not None for n in nodules)
            sizes = [n.diameter_mm for n in nodules if n is not None]
            assert sizes == sorted(sizes)
            assert len({(n.side, n.u, n.v) for n in nodules if n is not None}) == 1
    # One anatomy per patient: different patients look different.
    anatomies = {r.latent.state.anatomy for r in hard.study_records if r.latent is not None}
    assert len(anatomies) == len(by_patient)


def test_findings_are_graded_and_overlap(hard: SynthResult) -> None:
    latents = [r.latent for r in hard.study_records if r.latent is not None]
    ratios = np.array([lat.state.ctr for lat in latents])
    assert ratios.std() > 0.03 and len(np.unique(ratios)) == len(ratios)
    near = [
        r.cardiomegaly
        for r in hard.study_records
        if r.latent is not None and 0.48 < r.latent.state.ctr < 0.53
    ]
    assert True in near and False in near  # labels overlap around the threshold
    nodules = [lat.state.nodule for lat in latents if lat.state.nodule is not None]
    assert any(n.behind_rib for n in nodules) and not all(n.behind_rib for n in nodules)
    assert max(n.visibility for n in nodules) > 4 * min(n.visibility for n in nodules)
    degrees = [lat.state.effusion for lat in latents if lat.state.effusion > 0]
    assert max(degrees) > 3 * min(degrees)
    # Several findings in one film.
    assert any(
        sum((lat.state.nodule is not None, lat.state.effusion > 0, lat.state.ctr > 0.5)) >= 2
        for lat in latents
    )


def test_label_noise_and_shortcuts_by_site() -> None:
    difficulty = difficulty_for("hard")
    rng = np.random.default_rng(0)
    for site_index in range(3):
        fn = np.mean([not sheet_label(rng, difficulty, True, site_index) for _ in range(4000)])
        fp = np.mean([sheet_label(rng, difficulty, False, site_index) for _ in range(4000)])
        assert abs(fn - difficulty.false_negative[site_index]) < 0.02
        assert abs(fp - difficulty.false_positive[site_index]) < 0.015
    # Portable AP films go with effusions (a shortcut), and prevalence differs by site.
    views: dict[bool, list[bool]] = {True: [], False: []}
    nodules = []
    for site_index in range(3):
        here = []
        for _ in range(1500):
            state = first_state(rng, difficulty, site_index)
            latent = study_latent(rng, difficulty, state, site_index)
            views[state.effusion > 0].append(latent.view == "AP")
            here.append(state.nodule is not None)
        nodules.append(float(np.mean(here)))
    assert np.mean(views[True]) > np.mean(views[False]) + 0.3
    assert max(nodules) - min(nodules) > 0.08


def test_population_auroc_is_the_expected_statistic() -> None:
    # Brute force on ties: 3 positives, 3 negatives.
    assert auroc([0.1, 0.4, 0.4, 0.8, 0.8, 0.9], [0, 0, 1, 0, 1, 1]) == pytest.approx(
        (1.5 + 2.5 + 3) / 9
    )
    assert math.isnan(auroc([0.2, 0.3], [0, 0]))
    # Weighting each case by its label probability is the mean over drawn labels.
    rng = np.random.default_rng(1)
    scores = rng.beta(0.5, 2.0, 3000)
    drawn = [auroc(scores, rng.random(scores.size) < scores) for _ in range(40)]
    assert auroc(scores, scores) == pytest.approx(float(np.mean(drawn)), abs=0.01)


def test_a_thumbnail_regression_does_not_reach_the_nodule_ceiling(
    hard: SynthResult, truth: dict[str, Any]
) -> None:
    """Small, faint nodules vanish in a 16 x 16 thumbnail: the task is not trivial."""
    images, labels = [], []
    for record in hard.study_records:
        pixels = pydicom.dcmread(record.files[0]).pixel_array.astype(np.float64)
        pixels = (pixels - pixels.min()) / np.ptp(pixels)
        images.append(pixels.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel())
        labels.append(float(record.nodule))
    x, y = np.array(images), np.array(labels)
    train = np.arange(len(y)) % 3 != 0
    mean, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / sd
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(1500):  # ridge logistic regression, plain gradient descent
        p = 1.0 / (1.0 + np.exp(-(x[train] @ w + b)))
        g = p - y[train]
        w -= 0.05 * (x[train].T @ g / g.size + 1e-2 * w)
        b -= 0.05 * float(g.mean())
    fitted = auroc(x[~train] @ w + b, y[~train])
    assert fitted < 0.9 * truth["findings"]["nodule"]["ideal_auroc"], fitted


def test_tiny_difficulty_labels_are_the_truth(tmp_path: Path) -> None:
    tiny = generate(tmp_path, studies=30, seed=2, image_size=32, ct_slices=2, difficulty="tiny")
    assert tiny.ground_truth is not None
    document = json.loads(tiny.ground_truth.read_text(encoding="utf-8"))
    assert document["difficulty"] == "tiny"
    for finding in FINDINGS:
        assert document["findings"][finding]["ideal_auroc"] == 1.0
        assert document["findings"][finding]["ideal_auroc_sample"] == 1.0
    for record in tiny.study_records:
        if record.latent is not None:
            assert {f: getattr(record, f) for f in FINDINGS} == record.latent.read


def test_cli_difficulty(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Keep `synth` a sub-command."""

    runner = CliRunner()
    out = tmp_path / "out"
    args = ["synth", str(out), "--studies", "6", "--size", "32", "--ct-slices", "0"]
    ran = runner.invoke(app, [*args, "--difficulty", "tiny", "--json"])
    assert ran.exit_code == 0, ran.output
    shown = json.loads(ran.output)
    assert shown["difficulty"] == "tiny"
    assert json.loads(Path(shown["ground_truth"]).read_text())["difficulty"] == "tiny"
    refused = runner.invoke(app, [*args, "--difficulty", "trivial"])
    assert refused.exit_code != 0
