"""The truth behind a synthetic chest film: a patient's anatomy and findings, study by study.

Anatomy (body and lung shape, tissue density, rib phase, where a nodule sits) is drawn once
per *patient*, so two films of one person look alike and a split that leaks patients is
rewarded. Findings persist: a nodule stays and grows, the cardiothoracic ratio drifts, an
effusion may resolve or appear between studies. Each study then gets an acquisition (view,
small positioning shift) and the radiologist's read; :func:`sheet_label` adds the site's
label noise. Everything here is drawn from explicit generators, so it is reproducible and the
ideal observer (:mod:`medai.dicom.synth.ideal_observer`) can score it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from medai.dicom.synth.difficulty import Difficulty

__all__ = [
    "FINDINGS",
    "Anatomy",
    "ChestLatent",
    "NoduleState",
    "PatientState",
    "advance",
    "evidence",
    "first_state",
    "make_evident",
    "nodule_centre",
    "read_probability",
    "sheet_label",
    "study_latent",
]

FINDINGS = ("nodule", "effusion", "cardiomegaly")
_RIBS = 9


@dataclass(frozen=True)
class Anatomy:
    """A patient's body: positions and sizes in normalised image coordinates (0..1)."""

    shift_x: float
    shift_y: float
    lung_ry: float
    lung_rx: float
    heart_ry: float
    tissue: float
    lung_level: float
    rib_phase: float


@dataclass(frozen=True)
class NoduleState:
    """A solitary nodule: where it sits (lung side, offsets in lung radii) and how it looks."""

    side: int
    u: float
    v: float
    diameter_mm: float
    contrast: float
    behind_rib: bool

    @property
    def visibility(self) -> float:
        """Contrast times size (against 15 mm), halved when a rib overlies it."""
        return self.contrast * self.diameter_mm / 15.0 * (0.5 if self.behind_rib else 1.0)


@dataclass(frozen=True)
class PatientState:
    """What a patient's films show at one point in time."""

    anatomy: Anatomy
    ctr: float
    ctr_trend: float  # the patient's own yearly drift of the ratio
    nodule: NoduleState | None
    effusion: float  # degree, 0 for none
    effusion_side: int


@dataclass(frozen=True)
class ChestLatent:
    """Everything one film is drawn from, and the radiologist's read of it.

    ``read`` is what the reporting radiologist called; the sheet's label (after the site's
    label noise) is decided apart, by :func:`sheet_label`.
    """

    state: PatientState
    view: str  # "PA" or "AP" (portable)
    offset_x: float  # positioning on the day
    offset_y: float
    read: dict[str, bool]


def _centred(value: float, threshold: float, gap: float) -> float:
    # Moves values out of a band around the threshold (only the tiny preset has one).
    if gap <= 0.0:
        return value
    return threshold + math.copysign(gap + abs(value - threshold), value - threshold)


def first_state(rng: np.random.Generator, difficulty: Difficulty, site_index: int) -> PatientState:
    """A new patient as the ``site_index``-th site first films them."""
    d = difficulty
    anatomy = Anatomy(
        # Wide spreads of thorax width and heart height: the ratio, not the heart's
        # area, is the finding.
        shift_x=float(rng.normal(0.0, 0.02)),
        shift_y=float(rng.normal(0.0, 0.02)),
        lung_ry=float(rng.uniform(0.25, 0.32)),
        lung_rx=float(rng.uniform(0.12, 0.17)),
        heart_ry=float(rng.uniform(0.085, 0.135)),
        tissue=float(rng.uniform(0.50, 0.58)),
        lung_level=float(rng.uniform(0.14, 0.22)),
        rib_phase=float(rng.uniform(0.0, 0.02)),
    )
    threshold = d.readers["cardiomegaly"].threshold
    ctr = float(rng.normal(d.ctr_mean + d.per_site(d.ctr_site_shift, site_index), d.ctr_sd))
    ctr = float(np.clip(_centred(ctr, threshold, d.ctr_gap), 0.33, 0.72))
    trend = float(rng.normal(d.ctr_drift_per_year, d.ctr_drift_per_year / 2))
    draws = rng.random(6)  # drawn whatever the outcome, so one switch does not shift the rest
    nodule = None
    if draws[0] < d.per_site(d.nodule_rate, site_index):
        nodule = NoduleState(
            side=int(draws[1] < 0.5),
            u=float(rng.uniform(-0.55, 0.55)),
            v=float(rng.uniform(-0.55, 0.35)),
            diameter_mm=float(rng.uniform(*d.nodule_diameter_mm)),
            contrast=float(rng.uniform(*d.nodule_contrast)),
            behind_rib=bool(draws[2] < d.nodule_behind_rib),
        )
    effusion = 0.0
    if draws[3] < d.per_site(d.effusion_rate, site_index):
        effusion = float(d.effusion_degree[0] + draws[4] * np.ptp(d.effusion_degree))
    return PatientState(anatomy, ctr, trend, nodule, effusion, int(draws[5] < 0.5))


def advance(
    rng: np.random.Generator, difficulty: Difficulty, state: PatientState, years: float
) -> PatientState:
    """The same patient ``years`` later: the ratio drifts, a nodule grows, effusions change."""
    d = difficulty
    ctr = float(np.clip(state.ctr + state.ctr_trend * years, 0.33, 0.72))
    nodule = state.nodule
    if nodule is not None:
        grown = nodule.diameter_mm * (1.0 + d.nodule_growth_per_year) ** years
        nodule = replace(nodule, diameter_mm=float(min(grown, 40.0)))
    draws = rng.random(3)
    effusion = state.effusion
    if effusion > 0.0:
        if draws[0] < 1.0 - math.exp(-d.effusion_resolve_per_year * years):
            effusion = 0.0
        else:  # an effusion that stays changes in size
            effusion = float(np.clip(effusion * (0.6 + 0.8 * draws[1]), *d.effusion_degree))
    elif draws[0] < 1.0 - math.exp(-d.effusion_onset_per_year * years):
        effusion = float(d.effusion_degree[0] + draws[1] * np.ptp(d.effusion_degree))
    side = state.effusion_side if state.effusion > 0.0 else int(draws[2] < 0.5)
    return replace(state, ctr=ctr, nodule=nodule, effusion=effusion, effusion_side=side)


def evidence(state: PatientState, finding: str) -> float:
    """The latent value a reader thresholds: the ratio, a nodule's visibility, the degree.

    ``-inf`` for a nodule that is not there.
    """
    if finding == "cardiomegaly":
        return state.ctr
    if finding == "effusion":
        return state.effusion if state.effusion > 0.0 else -math.inf
    if finding == "nodule":
        return state.nodule.visibility if state.nodule is not None else -math.inf
    raise ValueError(f"unknown finding {finding!r}")


def read_probability(difficulty: Difficulty, finding: str, value: float) -> float:
    """P(the radiologist calls ``finding``) given its latent ``value``."""
    reader = difficulty.readers[finding]
    if value == -math.inf:
        return 0.0
    if reader.sd <= 0.0:
        return 1.0 if value > reader.threshold else 0.0
    return 0.5 * math.erfc(-(value - reader.threshold) / (reader.sd * math.sqrt(2.0)))


def study_latent(
    rng: np.random.Generator, difficulty: Difficulty, state: PatientState, site_index: int
) -> ChestLatent:
    """One film of ``state`` at the ``site_index``-th site: view, positioning and the read."""
    d = difficulty
    draws = rng.random(1 + len(FINDINGS))
    ap_rate = d.per_site(d.ap_rate_with_effusion if state.effusion > 0 else d.ap_rate, site_index)
    view = "AP" if draws[0] < ap_rate else "PA"
    offset_x, offset_y = (float(v) for v in rng.normal(0.0, 0.008, 2))
    # A study's ratio differs a little from the patient's (inspiration, rotation).
    ctr = float(state.ctr + rng.normal(0.0, d.ctr_jitter)) if d.ctr_jitter > 0 else state.ctr
    seen = replace(state, ctr=ctr)
    read = {
        finding: bool(draws[1 + i] < read_probability(d, finding, evidence(seen, finding)))
        for i, finding in enumerate(FINDINGS)
    }
    return ChestLatent(seen, view, offset_x, offset_y, read)


def sheet_label(
    rng: np.random.Generator, difficulty: Difficulty, read: bool, site_index: int
) -> bool:
    """What the site's RIS sheet records for a read: flipped at the site's noise rates."""
    d = difficulty
    flip = d.per_site(d.false_negative if read else d.false_positive, site_index)
    return read != bool(rng.random() < flip)


def nodule_centre(
    anatomy: Anatomy, nodule: NoduleState, cx: float, cy: float
) -> tuple[float, float]:
    """Where a nodule's centre lies (y, x); one behind a rib is moved onto the nearest rib."""
    lung_cx = cx + (0.19 if nodule.side else -0.19)
    ny = cy - 0.04 + nodule.v * anatomy.lung_ry
    nx = lung_cx + nodule.u * anatomy.lung_rx
    if nodule.behind_rib:
        lateral = abs(nx - cx)
        arcs = [
            cy - anatomy.lung_ry - 0.02 + anatomy.rib_phase + k * 0.06 + 1.1 * (lateral - 0.08) ** 2
            for k in range(_RIBS)
        ]
        ny = min(arcs, key=lambda arc: abs(arc - ny))
    return ny, nx


def make_evident(difficulty: Difficulty, state: PatientState, finding: str) -> PatientState:
    """``state`` with ``finding`` clearly present (well above the reading threshold).

    The planner gives the first chest studies one such finding each, so that even a run
    of a few studies holds every finding.
    """
    reader = difficulty.readers[finding]
    margin = 4.0 * reader.sd
    if finding == "cardiomegaly":
        return replace(state, ctr=max(state.ctr, reader.threshold + max(margin, 0.06)))
    if finding == "effusion":
        return replace(state, effusion=max(state.effusion, difficulty.effusion_degree[1] * 0.9))
    if finding == "nodule":
        diameter = difficulty.nodule_diameter_mm[1]
        contrast = max(difficulty.nodule_contrast[1], 15.0 * (reader.threshold + margin) / diameter)
        nodule = NoduleState(side=0, u=0.1, v=-0.2, diameter_mm=diameter, contrast=contrast,
                             behind_rib=False)  # fmt: skip
        return replace(state, nodule=nodule)
    raise ValueError(f"unknown finding {finding!r}")
