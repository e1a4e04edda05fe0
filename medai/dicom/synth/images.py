"""Synthetic pixels: chest radiographs with drawn-in findings, and CT slices in HU."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["CHEST_MAX", "ct_slice_hu", "marker_overlay", "render_chest"]

CHEST_MAX = 4095  # radiographs are stored with 12 bits

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


def render_chest(
    size: int, *, seed: int, nodule: bool, effusion: bool, cardiomegaly: bool
) -> NDArray[np.uint16]:
    """Draw a frontal chest radiograph (MONOCHROME2, 12 bits stored).

    Anatomy: torso, two lungs with diaphragm domes, mediastinum and spine, heart,
    ribs and clavicles, plus noise. Findings: ``nodule`` is a bright round blob in a
    lung, ``effusion`` a fluid opacity with a meniscus filling one costophrenic
    angle, ``cardiomegaly`` a heart shadow about 1.5 times as wide.

    Every random parameter is drawn whatever the finding flags, so two calls with
    the same ``seed`` differ exactly by the findings toggled.

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
    rng = np.random.default_rng(seed)
    grid = _grid(size, size)
    y, x = grid
    shift_x, shift_y = rng.normal(0.0, 0.015, 2)
    lung_ry, lung_rx = rng.uniform(0.26, 0.31), rng.uniform(0.13, 0.16)
    heart_rx = rng.uniform(0.14, 0.16)
    heart_ry = rng.uniform(0.10, 0.12)
    tissue, lung_level, bone = rng.uniform(0.50, 0.58), rng.uniform(0.14, 0.22), 0.82
    rib_phase = rng.uniform(0.0, 0.02)
    nodule_side, nodule_u, nodule_v = (
        rng.integers(2),
        rng.uniform(-0.6, 0.6),
        rng.uniform(-0.55, 0.35),
    )
    nodule_sigma = rng.uniform(0.022, 0.032)
    effusion_side, effusion_height = rng.integers(2), rng.uniform(0.11, 0.16)
    gain, noise = rng.uniform(0.85, 1.0), rng.normal(0.0, 0.018, (size, size))

    cx, cy = 0.5 + shift_x, 0.5 + shift_y
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
        y0 = cy - lung_ry - 0.02 + rib_phase + k * 0.06
        for side in (-1.0, 1.0):
            lateral = (x - cx) * side
            arc = y0 + 1.1 * (lateral - 0.08) ** 2
            rib = (np.abs(y - arc) < 0.010) & (lateral > 0.04) & thorax
            image[rib] += 0.09
    for side in (-1.0, 1.0):  # clavicles
        clav = (np.abs(y - (cy - lung_ry - 0.01 + 0.15 * (x - cx) * side)) < 0.013) & (
            np.abs(x - cx - side * 0.14) < 0.13
        )
        image[clav] = bone * 0.85
    spine = (np.abs(x - cx) < 0.035) & body
    image[spine] = np.maximum(image[spine], tissue + 0.12)

    width = heart_rx * (1.55 if cardiomegaly else 1.0)
    # The heart sits left of the midline (image right in the radiological convention).
    heart = _ellipse(
        grid,
        cy + lung_ry * 0.45,
        cx + 0.04 + (width - heart_rx) * 0.45,
        heart_ry * (1.15 if cardiomegaly else 1.0),
        width,
    )
    image[heart] = np.maximum(image[heart], tissue + 0.08)

    if effusion:
        lung = lungs[int(effusion_side)]
        lung_cx = centres[int(effusion_side)]
        bottom = float(y[lung].max()) if lung.any() else cy + lung_ry
        lateral = np.clip(np.abs(x - lung_cx) / lung_rx, 0.0, 1.0)
        # Meniscus sign: the fluid climbs higher laterally.
        level = bottom - effusion_height - 0.07 * lateral
        fluid = lung & (y > level)
        image[fluid] = np.maximum(image[fluid], tissue + 0.04)
    if nodule:
        lung_cx = centres[int(nodule_side)]
        ny = cy - 0.04 + nodule_v * lung_ry
        nx = lung_cx + nodule_u * lung_rx
        blob = np.exp(-((y - ny) ** 2 + (x - nx) ** 2) / (2 * nodule_sigma**2))
        image += (0.45 * blob).astype(np.float32)

    image = _blur(image, max(1, size // 128)) + noise.astype(np.float32)
    scaled = np.clip(image * gain, 0.0, 1.0) * CHEST_MAX
    result: NDArray[np.uint16] = np.round(scaled).astype(np.uint16)
    return result


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
