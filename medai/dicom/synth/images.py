"""Synthetic pixels: chest radiographs with drawn-in findings, and CT slices in HU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medai.dicom.synth.latent import (
    Anatomy,
    ChestLatent,
    NoduleState,
    PatientState,
    nodule_centre,
)

__all__ = [
    "CHEST_MAX",
    "Acquisition",
    "ct_slice_hu",
    "draw_chest",
    "marker_overlay",
    "render_chest",
]

CHEST_MAX = 4095  # radiographs are stored with 12 bits
# The heart is far from the detector on an AP film, so its shadow is wider.
_AP_MAGNIFICATION = 1.08

_Grid = tuple[NDArray[np.float32], NDArray[np.float32]]


def _grid(rows: int, columns: int) -> _Grid:
    # Normalised coordinates (0..1 both ways) so anatomy scales with the image size.
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    return y / max(rows - 1, 1), x / max(columns - 1, 1)


def _ellipse(grid: _Grid, cy: float, cx: float, ry: float, rx: float) -> NDArray[np.bool_]:
    y, x = grid
    result: NDArray[np.bool_] = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    return result


def _blur(image: NDArray[np.float32], radius: int) -> NDArray[np.float32]:
    # A separable box blur softens the drawn edges the way scatter and the detector do.
    if radius < 1:
        return image
    width = 2 * radius + 1
    padded = np.pad(image, radius, mode="edge")
    for axis in (0, 1):
        cumulative = np.cumsum(padded, axis=axis, dtype=np.float32)
        cumulative = np.insert(cumulative, 0, 0.0, axis=axis)
        upper = np.take(cumulative, np.arange(width, cumulative.shape[axis]), axis=axis)
        lower = np.take(cumulative, np.arange(0, cumulative.shape[axis] - width), axis=axis)
        padded = ((upper - lower) / width).astype(np.float32)
        padded = np.pad(
            padded, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge"
        )
    return padded[radius:-radius, radius:-radius].astype(np.float32)


@dataclass(frozen=True)
class Acquisition:
    """How a site's detector renders a film: noise, contrast curve and resolution.

    ``noise`` is the standard deviation of the quantum noise (fraction of full scale),
    ``gamma`` bends the contrast curve (above 1: darker mid-tones, flatter lungs), and
    ``blur`` scales the scatter blur (above 1: a softer, lower-resolution detector).
    """

    noise: float = 0.018
    gamma: float = 1.0
    blur: float = 1.0


def draw_chest(
    size: int, latent: ChestLatent, *, seed: int, acquisition: Acquisition = Acquisition()
) -> NDArray[np.uint16]:
    """Draw the frontal chest radiograph of ``latent`` (MONOCHROME2, 12 bits stored).

    Anatomy: torso, two lungs with diaphragm domes, mediastinum and spine, heart, ribs
    and clavicles. The heart's width is the latent cardiothoracic ratio times the thorax
    width (magnified on an AP film); a nodule is a disc whose size and contrast are
    the latent ones (on a rib when it lies behind one); an effusion fills the
    costophrenic angle to a height and density that grow with its degree, with a
    meniscus. Portable AP films are noisier and show the clavicles higher.

    Parameters
    ----------
    size : int
        Rows and columns of the square image.
    latent : ChestLatent
        The patient's state and the study's view and positioning.
    seed : int
        Seed of the gain and the noise.
    acquisition : Acquisition
        The site's detector.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` uint16 array with values in ``0..4095``.
    """
    rng = np.random.default_rng(seed)
    state, anatomy = latent.state, latent.state.anatomy
    portable = latent.view == "AP"
    grid = _grid(size, size)
    y, x = grid
    gain = rng.uniform(0.85, 1.0)
    noise_sd = acquisition.noise * (1.3 if portable else 1.0)
    noise = rng.normal(0.0, noise_sd, (size, size))
    tissue, lung_level, bone = anatomy.tissue, anatomy.lung_level, 0.82
    lung_ry, lung_rx = anatomy.lung_ry, anatomy.lung_rx

    cx = 0.5 + anatomy.shift_x + latent.offset_x
    cy = 0.5 + anatomy.shift_y + latent.offset_y
    image = np.zeros((size, size), np.float32) + 0.04  # air beside the body
    body = _ellipse(grid, cy + 0.08, cx, 0.58, 0.45)
    image[body] = tissue
    centres = (cx - 0.19, cx + 0.19)
    lungs = []
    for lung_cx in centres:
        lung = _ellipse(grid, cy - 0.04, lung_cx, lung_ry, lung_rx)
        # The diaphragm dome: lower laterally, which makes the costophrenic angles.
        dome = cy + lung_ry * 0.72 + 0.07 * ((x - lung_cx) / lung_rx) ** 2
        lungs.append(lung & (y < dome))
    lung_mask = lungs[0] | lungs[1]
    image[lung_mask] = lung_level

    thorax = body & (y < cy + lung_ry + 0.02) & (np.abs(x - cx) < 0.19 + lung_rx + 0.04)
    for k in range(9):  # posterior ribs: arcs running down and out from the spine
        y0 = cy - lung_ry - 0.02 + anatomy.rib_phase + k * 0.06
        for side in (-1.0, 1.0):
            lateral = (x - cx) * side
            arc = y0 + 1.1 * (lateral - 0.08) ** 2
            rib = (np.abs(y - arc) < 0.010) & (lateral > 0.04) & thorax
            image[rib] += 0.09
    # On an AP film the beam is angled from the front: the clavicles project higher.
    clavicle_y = cy - lung_ry - (0.05 if portable else 0.01)
    for side in (-1.0, 1.0):
        clav = (np.abs(y - (clavicle_y + 0.15 * (x - cx) * side)) < 0.013) & (
            np.abs(x - cx - side * 0.14) < 0.13
        )
        image[clav] = bone * 0.85
    spine = (np.abs(x - cx) < 0.035) & body
    image[spine] = np.maximum(image[spine], tissue + 0.12)

    # The ratio is heart width over thorax width; the heart sits left of the midline
    # (image right in the radiological convention) and enlarges mostly to that side.
    half_thorax = 0.19 + lung_rx
    magnification = _AP_MAGNIFICATION if portable else 1.0
    width = state.ctr * half_thorax * magnification
    normal = 0.45 * half_thorax
    heart = _ellipse(
        grid,
        cy + lung_ry * 0.45,
        cx + 0.04 + (width - normal) * 0.45,
        anatomy.heart_ry * max(width / normal, 0.8) ** 0.35,
        width,
    )
    image[heart] = np.maximum(image[heart], tissue + 0.08)

    if state.effusion > 0.0:
        side = state.effusion_side
        lung = lungs[side]
        lung_cx = centres[side]
        bottom = float(y[lung].max()) if lung.any() else cy + lung_ry
        lateral = np.clip(np.abs(x - lung_cx) / lung_rx, 0.0, 1.0)
        # Meniscus sign: the fluid climbs higher laterally; a small one only blunts the angle.
        level = bottom - (0.005 + 0.1 * state.effusion) - 0.07 * lateral
        fluid = lung & (y > level)
        opacity = min(1.0, 0.45 + 0.55 * state.effusion)
        density = lung_level + (tissue + 0.04 - lung_level) * opacity
        image[fluid] = np.maximum(image[fluid], density)
    if state.nodule is not None:
        ny, nx = nodule_centre(anatomy, state.nodule, cx, cy)
        # A solid nodule: a disc of the latent diameter (the field is 430 mm wide) whose
        # rim fades over about a pixel, not a glow that melts into the lung.
        radius = state.nodule.diameter_mm / 860.0
        distance = np.sqrt((y - ny) ** 2 + (x - nx) ** 2)
        rim = max(1.0 / size, 0.004)
        blob = np.clip((radius - distance) / rim + 0.5, 0.0, 1.0)
        image += (state.nodule.contrast * blob).astype(np.float32)

    radius = max(1, round(size / 128 * acquisition.blur))
    image = _blur(image, radius) + noise.astype(np.float32)
    image = np.clip(image * gain, 0.0, 1.0) ** acquisition.gamma
    result: NDArray[np.uint16] = np.round(image * CHEST_MAX).astype(np.uint16)
    return result


def render_chest(
    size: int, *, seed: int, nodule: bool, effusion: bool, cardiomegaly: bool
) -> NDArray[np.uint16]:
    """Draw a chest radiograph with conspicuous findings switched on or off.

    A fixed, easy rendition for tests and examples: ``nodule`` is a large bright blob in
    a lung, ``effusion`` a large fluid opacity with a meniscus, ``cardiomegaly`` a heart
    about 1.5 times as wide. Every random value is drawn whatever the flags, so two calls
    with the same ``seed`` differ exactly by the findings toggled. Campaigns use
    :func:`draw_chest` on their latent state instead.

    Parameters
    ----------
    size : int
        Rows and columns of the square image.
    seed : int
        Seed of the anatomy, the finding positions and the noise.
    nodule, effusion, cardiomegaly : bool
        Which findings to draw.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` uint16 array with values in ``0..4095``.
    """
    rng = np.random.default_rng([seed, 1])
    anatomy = Anatomy(
        shift_x=float(rng.normal(0.0, 0.015)),
        shift_y=float(rng.normal(0.0, 0.015)),
        lung_ry=float(rng.uniform(0.26, 0.31)),
        lung_rx=float(rng.uniform(0.13, 0.16)),
        heart_ry=float(rng.uniform(0.10, 0.12)),
        tissue=float(rng.uniform(0.50, 0.58)),
        lung_level=float(rng.uniform(0.14, 0.22)),
        rib_phase=float(rng.uniform(0.0, 0.02)),
    )
    ctr = float(rng.uniform(0.42, 0.46))
    lump = NoduleState(
        side=int(rng.integers(2)),
        u=float(rng.uniform(-0.6, 0.6)),
        v=float(rng.uniform(-0.55, 0.35)),
        diameter_mm=float(rng.uniform(19.0, 27.0)),
        contrast=0.45,
        behind_rib=False,
    )
    state = PatientState(
        anatomy=anatomy,
        ctr=ctr * 1.55 if cardiomegaly else ctr,
        ctr_trend=0.0,
        nodule=lump if nodule else None,
        effusion=float(rng.uniform(1.0, 1.4)) if effusion else 0.0,
        effusion_side=int(rng.integers(2)),
    )
    latent = ChestLatent(state, "PA", 0.0, 0.0, read={})
    return draw_chest(size, latent, seed=seed)


def ct_slice_hu(rows: int, columns: int, *, seed: int, z: float) -> NDArray[np.int16]:
    """Draw one axial chest CT slice in Hounsfield units.

    ``z`` in ``0..1`` runs from the lung apices to the bases, so the lungs of a
    series change size from slice to slice.

    Parameters
    ----------
    rows, columns : int
        Image size.
    seed : int
        Seed of the patient's anatomy and of the noise (noise also depends on ``z``).
    z : float
        Position along the thorax, 0 (apex) to 1 (base).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` int16 array, air -1000, lung about -850, soft tissue
        about 40, bone about 700.
    """
    rng = np.random.default_rng(seed)
    body_ry, body_rx = rng.uniform(0.30, 0.36), rng.uniform(0.40, 0.45)
    lung_scale = rng.uniform(0.9, 1.1)
    noise_rng = np.random.default_rng([seed, int(z * 1_000_000)])
    grid = _grid(rows, columns)
    hu = np.full((rows, columns), -1000.0, np.float32)
    body = _ellipse(grid, 0.5, 0.5, body_ry, body_rx)
    hu[body] = -90.0  # subcutaneous fat rim
    hu[_ellipse(grid, 0.5, 0.5, body_ry - 0.025, body_rx - 0.025)] = 40.0
    lung_size = lung_scale * (0.55 + 0.45 * np.sin(np.pi * (0.25 + 0.6 * z)))
    for cx in (0.32, 0.68):
        hu[_ellipse(grid, 0.47, cx, 0.21 * lung_size, 0.13 * lung_size)] = -850.0
    hu[_ellipse(grid, 0.45, 0.55, 0.06, 0.06)] = 50.0  # heart and great vessels
    hu[_ellipse(grid, 0.74, 0.5, 0.045, 0.04)] = 700.0  # vertebral body
    hu[_ellipse(grid, 0.74, 0.5, 0.03, 0.025)] = 250.0  # cancellous bone
    table = (np.abs(grid[0] - 0.9) < 0.008) & (np.abs(grid[1] - 0.5) < 0.42)
    hu[table] = 200.0
    hu += noise_rng.normal(0.0, 12.0, (rows, columns)).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def marker_overlay(rows: int, columns: int) -> NDArray[np.uint8]:
    """A one-bit overlay plane: an ``L`` side marker in the upper left corner."""
    plane = np.zeros((rows, columns), np.uint8)
    unit = max(1, min(rows, columns) // 32)
    top, left = 2 * unit, 2 * unit
    plane[top : top + 5 * unit, left : left + unit] = 1
    plane[top + 4 * unit : top + 5 * unit, left : left + 3 * unit] = 1
    return plane
