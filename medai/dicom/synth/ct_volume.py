"""Synthetic chest CT volumes with 3-D nodules, their reading, and the CT ideal score.

A patient's nodule is the one of their :class:`~medai.dicom.synth.latent.PatientState`: it
sits in the same lung, at the same offsets, and grows study by study as on the films. What the
CT adds is per *patient* too: the nodule's attenuation above the lung (its contrast in HU,
from ground glass to solid), its height along the body axis and its elongation. The volume is
the series' anatomy (:func:`~medai.dicom.synth.images.ct_slice_hu`, slice by slice) with the
nodule added as a soft-edged ellipsoid, sampled at four depths inside each slice (so a thick
slice averages a small nodule away, as a real slice profile does), and the difficulty's
quantum noise on top.

The reader thresholds the nodule's CT *visibility*, contrast / 200 HU x diameter / 15 mm,
blurred by reading noise; the sheet then carries the site's label noise (the false negative
and false positive rates of the radiograph :class:`~medai.dicom.synth.difficulty.Difficulty`).
:func:`ct_ideal_score` is the exact probability that the sheet says "nodule" given the latent
values: the CT ideal observer (see :mod:`medai.dicom.synth.ideal_observer`).

The ceiling is a property of the latent values, not of the grid they are drawn on: a series
of 48 px (8.3 mm pixels, 12.5 mm slices at 24 slices) shows the ``tiny`` nodules (60-75 mm)
plainly, but averages most ``hard`` ones (10-34 mm, 60-320 HU) down to one to four voxels a
few noise levels above the lung, so a model on such coarse series stays far below the
``hard`` ceiling. Draw finer series (more pixels and slices) to approach it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medai.dicom.synth.difficulty import Difficulty, Reader
from medai.dicom.synth.images import ct_slice_hu
from medai.dicom.synth.latent import NoduleState

__all__ = [
    "CT_DIFFICULTIES",
    "CT_FIELD_OF_VIEW_MM",
    "CT_SCAN_LENGTH_MM",
    "CtDifficulty",
    "CtLatent",
    "CtNodule",
    "ct_difficulty_for",
    "ct_ideal_score",
    "ct_nodule",
    "ct_read_probability",
    "ct_study_latent",
    "make_ct_evident",
    "nodule_profile",
    "render_ct_volume",
]

CT_FIELD_OF_VIEW_MM = 400.0  # in-plane, over the larger of rows and columns
CT_SCAN_LENGTH_MM = 300.0  # along the body axis, over all slices
_SUBSLICES = 4  # depths sampled inside one slice (its slice profile)


@dataclass(frozen=True)
class CtDifficulty:
    """How CT nodules look and are read (label noise comes from the radiograph difficulty).

    Attributes
    ----------
    name
        The preset's name, as the radiograph :class:`Difficulty` it goes with.
    nodule_contrast_hu
        Range (uniform, per patient) of a nodule's attenuation above the lung, in HU.
    nodule_elongation
        Range (uniform, per patient) of the ellipsoid's axis along the body over its
        in-plane diameter.
    noise_hu
        Standard deviation of the quantum noise added to every voxel, in HU.
    reader
        The read of ``nodule``: on the visibility, contrast / 200 HU x diameter / 15 mm.
    """

    name: str
    nodule_contrast_hu: tuple[float, float]
    nodule_elongation: tuple[float, float]
    noise_hu: float
    reader: Reader


CT_HARD = CtDifficulty(
    name="hard",
    nodule_contrast_hu=(60.0, 320.0),
    nodule_elongation=(0.7, 1.3),
    noise_hu=30.0,
    reader=Reader(threshold=0.6, sd=0.25),
)
CT_MODERATE = CtDifficulty(
    name="moderate",
    nodule_contrast_hu=(150.0, 450.0),
    nodule_elongation=(0.8, 1.2),
    noise_hu=15.0,
    reader=Reader(threshold=0.6, sd=0.1),
)
CT_TINY = CtDifficulty(
    name="tiny",
    nodule_contrast_hu=(600.0, 800.0),
    nodule_elongation=(1.0, 1.0),
    noise_hu=0.0,
    reader=Reader(threshold=0.3, sd=0.0),
)
CT_DIFFICULTIES: dict[str, CtDifficulty] = {d.name: d for d in (CT_HARD, CT_MODERATE, CT_TINY)}


def ct_difficulty_for(difficulty: Difficulty) -> CtDifficulty:
    """The CT preset of the radiograph preset's name (``hard`` for a difficulty of one's own)."""
    return CT_DIFFICULTIES.get(difficulty.name, CT_HARD)


@dataclass(frozen=True)
class CtNodule:
    """A nodule as the CT shows it: centre (normalised z, y, x), size, shape, attenuation."""

    z: float  # 0 apex .. 1 base
    y: float  # 0 anterior .. 1 posterior (image rows)
    x: float  # 0 .. 1 image columns
    diameter_mm: float
    elongation: float
    contrast_hu: float

    @property
    def visibility(self) -> float:
        """Contrast / 200 HU times diameter / 15 mm: what the CT reader thresholds."""
        return self.contrast_hu / 200.0 * self.diameter_mm / 15.0


@dataclass(frozen=True)
class CtLatent:
    """Everything one CT series' nodule is drawn from, and the radiologist's read of it."""

    nodule: CtNodule | None
    read: bool


def ct_nodule(
    rng: np.random.Generator, ct: CtDifficulty, nodule: NoduleState | None
) -> CtNodule | None:
    """The CT view of a patient's ``nodule`` (``None`` for none).

    ``rng`` should be the patient's own generator: the height, elongation and contrast are
    the patient's, so every CT of them shows the same lesion (grown as ``nodule`` grows).
    Its draws are made whatever ``nodule`` is.
    """
    z = float(rng.uniform(0.3, 0.7))
    elongation = float(rng.uniform(*ct.nodule_elongation))
    contrast = float(rng.uniform(*ct.nodule_contrast_hu))
    if nodule is None:
        return None
    # The lungs of ct_slice_hu: centres (0.47, 0.32 | 0.68), radii about 0.2 x 0.12.
    x = (0.68 if nodule.side else 0.32) + nodule.u * 0.12 * 0.6
    y = 0.47 + nodule.v * 0.2 * 0.6
    return CtNodule(z, y, x, nodule.diameter_mm, elongation, contrast)


def ct_read_probability(ct: CtDifficulty, nodule: CtNodule | None) -> float:
    """P(the radiologist calls a nodule) on this CT."""
    if nodule is None:
        return 0.0
    reader = ct.reader
    if reader.sd <= 0.0:
        return 1.0 if nodule.visibility > reader.threshold else 0.0
    return 0.5 * math.erfc(-(nodule.visibility - reader.threshold) / (reader.sd * math.sqrt(2.0)))


def ct_ideal_score(
    difficulty: Difficulty, ct: CtDifficulty, nodule: CtNodule | None, site_index: int
) -> float:
    """P(the site's sheet says "nodule" for this CT) given its latent nodule: the ideal score."""
    fn = difficulty.per_site(difficulty.false_negative, site_index)
    fp = difficulty.per_site(difficulty.false_positive, site_index)
    return fp + (1.0 - fp - fn) * ct_read_probability(ct, nodule)


def ct_study_latent(
    rng: np.random.Generator, ct: CtDifficulty, nodule: CtNodule | None
) -> CtLatent:
    """One CT of ``nodule`` and the radiologist's read of it (one draw of ``rng``)."""
    return CtLatent(nodule, bool(rng.random() < ct_read_probability(ct, nodule)))


def make_ct_evident(ct: CtDifficulty, nodule: CtNodule | None) -> CtNodule:
    """``nodule`` (or a new one) made clearly visible: well above the reading threshold.

    The planner gives the first CT of a campaign one, so that a run of a few CT studies
    holds both classes.
    """
    reader = ct.reader
    diameter = max(nodule.diameter_mm if nodule else 0.0, 30.0)
    contrast = max(
        ct.nodule_contrast_hu[1], 200.0 * 15.0 * (reader.threshold + 4 * reader.sd) / diameter
    )
    return CtNodule(
        z=nodule.z if nodule else 0.5,
        y=nodule.y if nodule else 0.45,
        x=nodule.x if nodule else 0.34,
        diameter_mm=diameter,
        elongation=nodule.elongation if nodule else 1.0,
        contrast_hu=contrast,
    )


def render_ct_volume(
    slices: int,
    rows: int,
    columns: int,
    *,
    seed: int,
    nodule: CtNodule | None,
    ct: CtDifficulty,
) -> NDArray[np.int16]:
    """The ``(slices, rows, columns)`` volume in HU: anatomy, the nodule, quantum noise.

    Slice ``k`` lies ``k`` slice thicknesses (``CT_SCAN_LENGTH_MM / slices``) below the
    first, at the apex; pixels are ``CT_FIELD_OF_VIEW_MM / max(rows, columns)`` wide.
    """
    depth = max(slices - 1, 1)
    volume = np.stack(
        [ct_slice_hu(rows, columns, seed=seed, z=k / depth) for k in range(slices)]
    ).astype(np.float32)
    if nodule is not None:
        volume += nodule_profile(slices, rows, columns, nodule) * np.float32(nodule.contrast_hu)
    if ct.noise_hu > 0.0:
        noise = np.random.default_rng([seed, 21]).normal(0.0, ct.noise_hu, volume.shape)
        volume += noise.astype(np.float32)
    return np.clip(np.round(volume), -1024, 3071).astype(np.int16)


def nodule_profile(slices: int, rows: int, columns: int, nodule: CtNodule) -> NDArray[np.float32]:
    """The nodule's share of each voxel (0..1): a soft-edged ellipsoid over each slice's depth."""
    thickness = CT_SCAN_LENGTH_MM / max(slices, 1)
    pixel = CT_FIELD_OF_VIEW_MM / max(rows, columns)
    radius = nodule.diameter_mm / 2.0
    edge = pixel / 4.0  # in-plane partial volume of the boundary pixels
    centre_z = nodule.z * max(slices - 1, 1) * thickness
    centre_y, centre_x = nodule.y * rows * pixel, nodule.x * columns * pixel
    y = (np.arange(rows, dtype=np.float32) + 0.5) * pixel - centre_y
    x = (np.arange(columns, dtype=np.float32) + 0.5) * pixel - centre_x
    in_plane = (y[:, None] ** 2 + x[None, :] ** 2)[None]  # (1, rows, columns)
    offsets = (np.arange(_SUBSLICES, dtype=np.float32) + 0.5) / _SUBSLICES - 0.5
    share = np.zeros((slices, rows, columns), np.float32)
    for offset in offsets:
        z = (np.arange(slices, dtype=np.float32) + offset) * thickness - centre_z
        scaled = (z / nodule.elongation)[:, None, None] ** 2
        distance = np.sqrt(in_plane + scaled)
        share += 0.5 * (1.0 - np.tanh((distance - radius) / edge))
    return share / np.float32(_SUBSLICES)
