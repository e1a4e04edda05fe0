"""Tiny synthetic CT series (with PHI planted, as real files carry it) for volume tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.utils.deid_factories import UID_ROOT, make_ct

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def ct_series(
    positions: Sequence[float],
    *,
    patient_id: str = "MRN-VOL-0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    size: tuple[int, int] = (8, 8),
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    orientation: Sequence[float] = AXIAL,
    pixels: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    window: tuple[float, float] | None = None,
) -> list[Dataset]:
    """One CT series, a slice at each of ``positions`` (mm along the slice normal).

    The slices share a study, series and Frame of Reference; the first pixel of each lies
    at ``(-100, -120)`` mm in its plane. ``pixels`` gives each slice's stored values (uint16,
    Rescale Intercept -1024); random ones otherwise. ``window`` is (centre, width).
    """
    study_uid = study_uid or generate_uid(UID_ROOT)
    series_uid = series_uid or generate_uid(UID_ROOT)
    frame_uid = generate_uid(UID_ROOT)
    o = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    rows, columns = size
    slices = []
    for index, z in enumerate(positions):
        ds = make_ct(
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            size=max(size),
            seed=seed * 1000 + index,
        )
        ds.Rows, ds.Columns = rows, columns
        if pixels is not None:
            stored = np.asarray(pixels[index], dtype=np.uint16)
        else:
            rng = np.random.default_rng(seed * 1000 + index)
            stored = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
        ds.PixelData = stored.tobytes()
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = index + 1
        position = -100.0 * o[:3] - 120.0 * o[3:] + z * normal
        ds.ImagePositionPatient = [f"{v:.3f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
        ds.SliceThickness = "2.0"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        slices.append(ds)
    return slices
