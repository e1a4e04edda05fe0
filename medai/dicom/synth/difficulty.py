"""How hard the synthetic campaign is: finding populations, readers, label noise, shortcuts.

A :class:`Difficulty` holds every parameter of the *truth* behind the pixels and the label
sheets: how the latent findings are distributed (a continuous cardiothoracic ratio, a nodule's
size, contrast and whether it lies behind a rib, an effusion's degree), how a radiologist reads
them (a threshold on the latent value, blurred by reading noise), how often each site's RIS
sheet then records the opposite (label noise by site), and the shortcuts a model could take
(prevalence by site, portable AP films for patients with an effusion). Because all of it is
known, :mod:`medai.dicom.synth.ideal_observer` can say what the best possible decision on the
latent values achieves against the sheets: the ceiling a model is measured against.

Three presets:

``hard`` (the default)
    Graded, overlapping findings near the reading thresholds, label noise of 3-15 % by site,
    both shortcuts on. The ideal observer's AUROC is about 0.90-0.92 for every finding.
``moderate``
    Clearer findings, less reading and label noise (ideal AUROC about 0.95-0.98).
``tiny``
    For images of 32-48 pixels (the tiny demo): every finding is large and far from its
    threshold (a nodule is 60-75 mm, four to six pixels at 32), readers are exact, sheets
    carry no label noise and there is no shortcut, so the ideal AUROC is 1. It is a
    different task, not a lower bar: a model still has to see it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIFFICULTIES", "Difficulty", "Reader", "difficulty_for"]


@dataclass(frozen=True)
class Reader:
    """A radiologist reading one finding: positive when ``latent + N(0, sd) > threshold``.

    ``sd == 0`` is an exact reader.
    """

    threshold: float
    sd: float


@dataclass(frozen=True)
class Difficulty:
    """Every parameter of the latent findings, their reading and the label sheets.

    Per-site tuples are indexed by the site's position (``i % len(tuple)``).

    Attributes
    ----------
    name
        The preset's name (``hard``, ``moderate``, ``tiny``).
    ctr_mean, ctr_sd
        A patient's cardiothoracic ratio at the first study (normal below 0.5).
    ctr_site_shift
        Added to ``ctr_mean`` by site: a site with older patients has more cardiomegaly.
    ctr_drift_per_year, ctr_jitter
        Yearly drift of the ratio (mean; its spread is half of it) and the study-to-study
        measurement spread (inspiration, positioning).
    ctr_gap
        Ratios closer than this to the reading threshold are pushed away from it (``tiny``).
    nodule_rate
        Share of patients with a nodule, by site.
    nodule_diameter_mm, nodule_contrast
        Ranges (uniform) of the diameter and the peak contrast (fraction of full scale).
    nodule_behind_rib
        Share of nodules that project over a rib, which halves how visible they are.
    nodule_growth_per_year
        Relative growth of a nodule's diameter per year.
    effusion_rate
        Share of patients with an effusion at their first study, by site.
    effusion_degree
        Range (uniform) of an effusion's degree: 0 is none, 1 a large one.
    effusion_onset_per_year, effusion_resolve_per_year
        Yearly chance that an effusion appears, or resolves, between studies.
    readers
        The reading of ``cardiomegaly`` (on the ratio), ``nodule`` (on its visibility:
        contrast x diameter / 15 mm, halved behind a rib) and ``effusion`` (on its degree).
    false_negative, false_positive
        By site: the share of positive reads the sheet records as negative, and of negative
        reads recorded as positive (transcription, templates, a second reader's opinion).
    ap_rate, ap_rate_with_effusion
        Share of portable AP films, without and with an effusion (a shortcut when larger).
        An AP film magnifies the heart (see :func:`medai.dicom.synth.images.draw_chest`);
        readers know it, so the read is on the true ratio.
    """

    name: str
    ctr_mean: float
    ctr_sd: float
    ctr_site_shift: tuple[float, ...]
    ctr_drift_per_year: float
    ctr_jitter: float
    ctr_gap: float
    nodule_rate: tuple[float, ...]
    nodule_diameter_mm: tuple[float, float]
    nodule_contrast: tuple[float, float]
    nodule_behind_rib: float
    nodule_growth_per_year: float
    effusion_rate: tuple[float, ...]
    effusion_degree: tuple[float, float]
    effusion_onset_per_year: float
    effusion_resolve_per_year: float
    readers: dict[str, Reader]
    false_negative: tuple[float, ...]
    false_positive: tuple[float, ...]
    ap_rate: tuple[float, ...]
    ap_rate_with_effusion: tuple[float, ...]

    def per_site(self, values: tuple[float, ...], site_index: int) -> float:
        """The value of a per-site tuple for the ``site_index``-th site."""
        return values[site_index % len(values)]


HARD = Difficulty(
    name="hard",
    ctr_mean=0.47,
    ctr_sd=0.05,
    ctr_site_shift=(0.0, -0.015, 0.02),
    ctr_drift_per_year=0.006,
    ctr_jitter=0.008,
    ctr_gap=0.0,
    nodule_rate=(0.3, 0.22, 0.38),
    nodule_diameter_mm=(10.0, 34.0),
    nodule_contrast=(0.1, 0.4),
    nodule_behind_rib=0.3,
    nodule_growth_per_year=0.08,
    effusion_rate=(0.25, 0.15, 0.35),
    effusion_degree=(0.03, 0.8),
    effusion_onset_per_year=0.1,
    effusion_resolve_per_year=0.5,
    readers={
        "cardiomegaly": Reader(threshold=0.5, sd=0.015),
        "nodule": Reader(threshold=0.12, sd=0.05),
        "effusion": Reader(threshold=0.2, sd=0.08),
    },
    false_negative=(0.06, 0.10, 0.15),
    false_positive=(0.03, 0.05, 0.07),
    ap_rate=(0.2, 0.1, 0.3),
    ap_rate_with_effusion=(0.6, 0.45, 0.75),
)

MODERATE = Difficulty(
    name="moderate",
    ctr_mean=0.47,
    ctr_sd=0.06,
    ctr_site_shift=(0.0, 0.0, 0.01),
    ctr_drift_per_year=0.006,
    ctr_jitter=0.005,
    ctr_gap=0.0,
    nodule_rate=(0.3, 0.25, 0.35),
    nodule_diameter_mm=(10.0, 28.0),
    nodule_contrast=(0.08, 0.2),
    nodule_behind_rib=0.15,
    nodule_growth_per_year=0.08,
    effusion_rate=(0.25, 0.2, 0.3),
    effusion_degree=(0.15, 1.0),
    effusion_onset_per_year=0.1,
    effusion_resolve_per_year=0.5,
    readers={
        "cardiomegaly": Reader(threshold=0.5, sd=0.008),
        "nodule": Reader(threshold=0.06, sd=0.01),
        "effusion": Reader(threshold=0.2, sd=0.04),
    },
    false_negative=(0.02, 0.04, 0.05),
    false_positive=(0.01, 0.02, 0.03),
    ap_rate=(0.2, 0.15, 0.25),
    ap_rate_with_effusion=(0.35, 0.3, 0.4),
)

TINY = Difficulty(
    name="tiny",
    ctr_mean=0.5,
    ctr_sd=0.07,
    ctr_site_shift=(0.0,),
    ctr_drift_per_year=0.0,
    ctr_jitter=0.0,
    ctr_gap=0.06,
    nodule_rate=(0.3,),
    nodule_diameter_mm=(60.0, 75.0),
    nodule_contrast=(0.45, 0.55),
    nodule_behind_rib=0.0,
    nodule_growth_per_year=0.0,
    effusion_rate=(0.25,),
    effusion_degree=(1.0, 1.4),
    effusion_onset_per_year=0.0,
    effusion_resolve_per_year=0.0,
    readers={
        "cardiomegaly": Reader(threshold=0.5, sd=0.0),
        "nodule": Reader(threshold=0.06, sd=0.0),
        "effusion": Reader(threshold=0.2, sd=0.0),
    },
    false_negative=(0.0,),
    false_positive=(0.0,),
    ap_rate=(0.2,),
    ap_rate_with_effusion=(0.2,),
)

DIFFICULTIES: dict[str, Difficulty] = {d.name: d for d in (HARD, MODERATE, TINY)}


def difficulty_for(name: str) -> Difficulty:
    """The preset called ``name``.

    Raises
    ------
    ValueError
        For a name that is not one of :data:`DIFFICULTIES`.
    """
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise ValueError(
            f"difficulty must be one of {', '.join(DIFFICULTIES)}, not {name!r}"
        ) from None
