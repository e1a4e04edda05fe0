"""The ceiling of a synthetic campaign: the ideal observer's AUROC against the noisy sheets.

The ideal observer knows the generator's latent values (the true cardiothoracic ratio, a
nodule's visibility, an effusion's degree) and the site, and scores a study with the exact
probability that the sheet says "present": ``fp + (1 - fp - fn) * P(read | latent)``. No
decision on the pixels can rank studies better against the sheets' labels, because the
labels depend on the pixels only through the latent values. Its AUROC is reported twice:

* on the generated studies (the Mann-Whitney statistic of the score against the labels
  written), which moves with the draw like any test-set estimate;
* for the population, from a large draw of latent values from the same distributions
  (no images), with each case weighted by its label probability rather than a drawn label,
  so only the latent draw varies. This is the ceiling to quote.

The CT nodule has its own ideal observer (:func:`ct_population_auroc`, the ground truth's
``ct`` section): the same construction on the CT read of the patient's nodule
(:mod:`medai.dicom.synth.ct_volume`), against the CT sheets.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from medai.dicom.synth.ct_volume import (
    CtDifficulty,
    CtLatent,
    ct_difficulty_for,
    ct_ideal_score,
    ct_nodule,
)
from medai.dicom.synth.difficulty import Difficulty
from medai.dicom.synth.latent import (
    FINDINGS,
    ChestLatent,
    PatientState,
    advance,
    evidence,
    first_state,
    read_probability,
    study_latent,
)

__all__ = [
    "CtGroundTruthStudy",
    "GroundTruthStudy",
    "auroc",
    "ct_population_auroc",
    "ideal_score",
    "population_auroc",
    "write_ground_truth",
]

# Per site: the pooled population value's standard error is about 0.005.
POPULATION_STUDIES = 6_000


@dataclass(frozen=True)
class GroundTruthStudy:
    """One chest study's truth, as the ground-truth file lists it."""

    study_instance_uid: str  # the original UID, so a test can join (it is no PHI)
    patient: str  # an index ("P0007"), not the patient's ID
    site: str
    site_index: int
    study_date: datetime.date
    latent: ChestLatent
    labels: dict[str, bool]


@dataclass(frozen=True)
class CtGroundTruthStudy:
    """One CT study's truth: its nodule (``None`` for none), the read and the sheet's label."""

    study_instance_uid: str
    patient: str
    site: str
    site_index: int
    study_date: datetime.date
    latent: CtLatent
    label: bool


def ideal_score(
    difficulty: Difficulty, finding: str, state: PatientState, site_index: int
) -> float:
    """P(the site's sheet says ``finding``) given the latent ``state``: the ideal score."""
    d = difficulty
    fn = d.per_site(d.false_negative, site_index)
    fp = d.per_site(d.false_positive, site_index)
    return fp + (1.0 - fp - fn) * read_probability(d, finding, evidence(state, finding))


def auroc(scores: ArrayLike, positive: ArrayLike) -> float:
    """AUROC of ``scores`` for labels, ties counted half; ``nan`` without both classes.

    ``positive`` holds each case's label (0 or 1) or, for the population value, its
    probability of being positive: a case then counts as ``p`` positive and ``1 - p``
    negative, which is the expectation of the AUROC statistic over the labels' draw
    (up to the tiny correlation of numerator and denominator).
    """
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(positive, dtype=np.float64)
    pos, neg = w, 1.0 - w
    if pos.sum() <= 0.0 or neg.sum() <= 0.0:
        return math.nan
    order = np.argsort(s, kind="stable")
    s, pos, neg = s[order], pos[order], neg[order]
    # Group equal scores: a positive beats the negatives below its group and ties half of
    # those inside it.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g = np.add.reduceat(pos, starts)
    neg_g = np.add.reduceat(neg, starts)
    below = np.cumsum(neg_g) - neg_g
    wins = float(np.sum(pos_g * (below + 0.5 * neg_g)))
    return wins / (float(pos.sum()) * float(neg.sum()))


def _population(
    difficulty: Difficulty, site_index: int, studies: int, seed: int
) -> list[ChestLatent]:
    # Patients followed for one to four studies, 14-300 days apart, as the planner does.
    rng = np.random.default_rng([seed, 404, site_index])
    latents: list[ChestLatent] = []
    while len(latents) < studies:
        state = first_state(rng, difficulty, site_index)
        for visit in range(int(min(rng.geometric(0.7), 4))):
            if visit:
                state = advance(rng, difficulty, state, float(rng.integers(14, 300)) / 365.25)
            latents.append(study_latent(rng, difficulty, state, site_index))
    return latents[:studies]


def population_auroc(
    difficulty: Difficulty,
    site_indices: Sequence[int],
    *,
    studies_per_site: int = POPULATION_STUDIES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The ideal AUROC per finding for the population, pooled over sites and by site.

    A property of the parameters, not of a campaign: the same for every campaign seed,
    and computed once per process (a second-long draw).

    Returns
    -------
    dict
        ``{finding: {"all": auroc, "prevalence": p, "site:<i>": auroc, ...}}``, where the
        pooled value gives every site the same share of studies (sites get studies in
        turn).
    """
    key = (repr(difficulty), tuple(site_indices), studies_per_site, seed)
    if key not in _POPULATION_CACHE:
        _POPULATION_CACHE[key] = _population_auroc(difficulty, site_indices, studies_per_site, seed)
    return {f: dict(values) for f, values in _POPULATION_CACHE[key].items()}


_POPULATION_CACHE: dict[tuple[str, tuple[int, ...], int, int], dict[str, dict[str, float]]] = {}


def _population_auroc(
    difficulty: Difficulty, site_indices: Sequence[int], studies_per_site: int, seed: int
) -> dict[str, dict[str, float]]:
    per_site = {i: _population(difficulty, i, studies_per_site, seed) for i in site_indices}
    result: dict[str, dict[str, float]] = {}
    for finding in FINDINGS:
        pooled_scores: list[float] = []
        values: dict[str, float] = {}
        for i, latents in per_site.items():
            scores = [ideal_score(difficulty, finding, lat.state, i) for lat in latents]
            values[f"site:{i}"] = auroc(scores, scores)
            pooled_scores.extend(scores)
        values["all"] = auroc(pooled_scores, pooled_scores)
        values["prevalence"] = float(np.mean(pooled_scores))
        result[finding] = values
    return result


def ct_population_auroc(
    difficulty: Difficulty,
    site_indices: Sequence[int],
    *,
    studies_per_site: int = POPULATION_STUDIES,
    seed: int = 0,
) -> dict[str, float]:
    """The CT nodule's ideal AUROC for the population, pooled over sites and by site.

    The patients' nodules are those of :func:`population_auroc`'s draw (followed over
    studies, growing); each gets its CT contrast, height and shape as the generator draws
    them. Returns ``{"all": auroc, "prevalence": p, "site:<i>": auroc, ...}``.
    """
    ct = ct_difficulty_for(difficulty)
    key = (repr(difficulty), repr(ct), tuple(site_indices), studies_per_site, seed)
    if key not in _CT_POPULATION_CACHE:
        values: dict[str, float] = {}
        pooled: list[float] = []
        for i in site_indices:
            scores = _ct_population_scores(difficulty, ct, i, studies_per_site, seed)
            values[f"site:{i}"] = auroc(scores, scores)
            pooled.extend(scores)
        values["all"] = auroc(pooled, pooled)
        values["prevalence"] = float(np.mean(pooled))
        _CT_POPULATION_CACHE[key] = values
    return dict(_CT_POPULATION_CACHE[key])


_CT_POPULATION_CACHE: dict[tuple[str, str, tuple[int, ...], int, int], dict[str, float]] = {}


def _ct_population_scores(
    difficulty: Difficulty, ct: CtDifficulty, site_index: int, studies: int, seed: int
) -> list[float]:
    rng = np.random.default_rng([seed, 405, site_index])
    return [
        ct_ideal_score(difficulty, ct, ct_nodule(rng, ct, latent.state.nodule), site_index)
        for latent in _population(difficulty, site_index, studies, seed)
    ]


def _ct_section(
    difficulty: Difficulty, sites: Sequence[str], studies: Sequence[CtGroundTruthStudy]
) -> dict[str, object]:
    """The ground truth's ``ct`` section: the CT nodule's ceilings and every CT's latent."""
    ct = ct_difficulty_for(difficulty)
    population = ct_population_auroc(difficulty, range(len(sites)))

    def sample(group: Sequence[CtGroundTruthStudy]) -> tuple[float, float]:
        scores = [ct_ideal_score(difficulty, ct, s.latent.nodule, s.site_index) for s in group]
        labels = [float(s.label) for s in group]
        return auroc(scores, labels), float(np.mean(labels)) if labels else math.nan

    by_site: dict[str, object] = {}
    for i, site in enumerate(sites):
        here = [s for s in studies if s.site_index == i]
        site_sample, site_prevalence = sample(here)
        by_site[site] = {
            "ideal_auroc": _nan_free(population[f"site:{i}"]),
            "ideal_auroc_sample": _nan_free(site_sample),
            "prevalence": _nan_free(site_prevalence),
            "false_negative": difficulty.per_site(difficulty.false_negative, i),
            "false_positive": difficulty.per_site(difficulty.false_positive, i),
            "studies": len(here),
        }
    all_sample, prevalence = sample(studies)
    entries: dict[str, object] = {}
    for s in studies:
        nodule = s.latent.nodule
        entries[s.study_instance_uid] = {
            "patient": s.patient,
            "site": s.site,
            "study_date": s.study_date.isoformat(),
            "nodule_visibility": round(nodule.visibility, 5) if nodule else 0.0,
            "nodule_diameter_mm": round(nodule.diameter_mm, 3) if nodule else 0.0,
            "nodule_contrast_hu": round(nodule.contrast_hu, 2) if nodule else 0.0,
            "nodule_centre_zyx": [round(nodule.z, 4), round(nodule.y, 4), round(nodule.x, 4)]
            if nodule
            else None,
            "read": {"nodule": s.latent.read},
            "label": {"nodule": s.label},
            "ideal_score": {
                "nodule": round(ct_ideal_score(difficulty, ct, nodule, s.site_index), 6)
            },
        }
    return {
        "parameters": asdict(ct),
        "findings": {
            "nodule": {
                "ideal_auroc": _nan_free(population["all"]),
                "ideal_auroc_sample": _nan_free(all_sample),
                "prevalence": _nan_free(prevalence),
                "population_prevalence": _nan_free(population["prevalence"]),
                "by_site": by_site,
            }
        },
        "studies": entries,
    }


def _study_entry(difficulty: Difficulty, study: GroundTruthStudy) -> dict[str, object]:
    state = study.latent.state
    nodule = state.nodule
    return {
        "patient": study.patient,
        "site": study.site,
        "study_date": study.study_date.isoformat(),
        "view": study.latent.view,
        "ctr": round(state.ctr, 5),
        "nodule_visibility": round(nodule.visibility, 5) if nodule else 0.0,
        "nodule_diameter_mm": round(nodule.diameter_mm, 3) if nodule else 0.0,
        "nodule_contrast": round(nodule.contrast, 5) if nodule else 0.0,
        "nodule_behind_rib": bool(nodule.behind_rib) if nodule else False,
        "effusion_degree": round(state.effusion, 5),
        "read": dict(study.latent.read),
        "label": dict(study.labels),
        "ideal_score": {
            f: round(ideal_score(difficulty, f, state, study.site_index), 6) for f in FINDINGS
        },
    }


def _sample_auroc(
    difficulty: Difficulty, studies: Sequence[GroundTruthStudy], finding: str
) -> tuple[float, float]:
    scores = [ideal_score(difficulty, finding, s.latent.state, s.site_index) for s in studies]
    labels = [float(s.labels[finding]) for s in studies]
    prevalence = float(np.mean(labels)) if labels else math.nan
    return auroc(scores, labels), prevalence


def _nan_free(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def write_ground_truth(
    path: Path,
    difficulty: Difficulty,
    sites: Sequence[str],
    studies: Sequence[GroundTruthStudy],
    *,
    ct_studies: Sequence[CtGroundTruthStudy] = (),
) -> dict[str, object]:
    """Write (and return) the campaign's ground truth: ceilings, rates and every latent.

    ``findings.<name>.ideal_auroc`` is the population ceiling; ``ideal_auroc_sample`` the
    value on the generated studies; ``by_site`` both per site with its label-noise rates.
    ``studies`` is keyed by the original StudyInstanceUID. With CT studies, ``ct`` holds
    the same for the CT nodule (``ct.findings.nodule``, ``ct.studies``) and the CT
    parameters.
    """
    population = population_auroc(difficulty, range(len(sites)))
    findings: dict[str, object] = {}
    for finding in FINDINGS:
        sample, prevalence = _sample_auroc(difficulty, studies, finding)
        by_site: dict[str, object] = {}
        for i, site in enumerate(sites):
            here = [s for s in studies if s.site_index == i]
            site_sample, site_prevalence = _sample_auroc(difficulty, here, finding)
            by_site[site] = {
                "ideal_auroc": _nan_free(population[finding][f"site:{i}"]),
                "ideal_auroc_sample": _nan_free(site_sample),
                "prevalence": _nan_free(site_prevalence),
                "false_negative": difficulty.per_site(difficulty.false_negative, i),
                "false_positive": difficulty.per_site(difficulty.false_positive, i),
                "studies": len(here),
            }
        findings[finding] = {
            "ideal_auroc": _nan_free(population[finding]["all"]),
            "ideal_auroc_sample": _nan_free(sample),
            "prevalence": _nan_free(prevalence),
            "population_prevalence": _nan_free(population[finding]["prevalence"]),
            "by_site": by_site,
        }
    document: dict[str, object] = {
        "difficulty": difficulty.name,
        "parameters": asdict(difficulty),
        "population_studies_per_site": POPULATION_STUDIES,
        "findings": findings,
        "studies": {s.study_instance_uid: _study_entry(difficulty, s) for s in studies},
    }
    if ct_studies:
        document["ct"] = _ct_section(difficulty, sites, ct_studies)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return document
