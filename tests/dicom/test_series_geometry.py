"""Series geometry: slices ordered along the normal; gaps, duplicates and localizers handled."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medai.dicom.series_geometry import assemble_series
from medai.errors import SeriesRefused

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _slice(
    z: float,
    *,
    orientation: tuple[float, ...] = AXIAL,
    corner: tuple[float, float] = (-100.0, -120.0),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    size: tuple[int, int] = (16, 16),
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
) -> Dataset:
    """A CT slice header whose position is ``z`` mm along the normal of ``orientation``."""
    o = np.asarray(orientation)
    normal = np.cross(o[:3], o[3:])
    position = corner[0] * o[:3] + corner[1] * o[3:] + z * normal
    ds = Dataset()
    ds.Modality = "CT"
    ds.ImageType = list(image_type)
    ds.Rows, ds.Columns = size
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = "2.5"
    ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.3f}" for v in position]
    ds.FrameOfReferenceUID = "2.25.1"
    return ds


def _series(positions: list[float], **kwargs: object) -> list[Dataset]:
    return [_slice(z, **kwargs) for z in positions]  # type: ignore[arg-type]


def _refused(headers: list[Dataset], **kwargs: object) -> SeriesRefused:
    with pytest.raises(SeriesRefused) as caught:
        assemble_series(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("orientation", [AXIAL, CORONAL, SAGITTAL])
def test_shuffled_instances_are_ordered_along_the_slice_normal(
    orientation: tuple[float, ...],
) -> None:
    positions = [-40.0 + 2.5 * k for k in range(10)]
    shuffled = positions[:]
    random.Random(7).shuffle(shuffled)
    headers = _series(shuffled, orientation=orientation)

    geometry = assemble_series(headers)

    assert [shuffled[i] for i in geometry.order] == positions
    assert geometry.slices == 10 and geometry.excluded == {}
    assert geometry.slice_spacing_mm == pytest.approx(2.5)
    assert geometry.pixel_spacing_mm == (0.8, 0.7)
    assert geometry.spacing_mm == pytest.approx((2.5, 0.8, 0.7))
    assert geometry.orientation == pytest.approx(orientation)
    first = headers[geometry.order[0]]
    assert geometry.origin == pytest.approx([float(v) for v in first.ImagePositionPatient])
    # The affine puts every slice's first pixel where its header says, row 1 and column 1 too.
    affine = geometry.affine_lps()
    for depth, index in enumerate(geometry.order):
        ipp = [float(v) for v in headers[index].ImagePositionPatient]
        assert affine @ np.array([depth, 0, 0, 1.0]) == pytest.approx([*ipp, 1.0], abs=1e-3)
    o = np.asarray(orientation)
    expected = np.asarray(geometry.origin) + 0.8 * o[3:] + 0.7 * o[:3]
    assert (affine @ np.array([0, 1, 1, 1.0]))[:3] == pytest.approx(expected)


def test_a_missing_slice_refuses_the_series_with_its_reason() -> None:
    positions = [2.0 * k for k in range(8)]
    del positions[4]
    refusal = _refused(_series(positions[::-1]))
    assert refusal.reason_code == "missing-slice"
    assert "1 slice(s) missing" in str(refusal) and "after slice 4 of 7" in str(refusal)


def test_irregular_spacing_is_refused() -> None:
    refusal = _refused(_series([0.0, 2.0, 4.0, 7.1, 9.1]))
    assert refusal.reason_code == "irregular-spacing"
    # Within the tolerance it is one volume, at the mean spacing.
    assert assemble_series(_series([0.0, 2.0, 4.02, 6.0])).slice_spacing_mm == pytest.approx(2.0)


def test_localizers_are_excluded_with_a_reason() -> None:
    headers = _series([0.0, 3.0, 6.0, 9.0])
    headers.insert(1, _slice(0.0, orientation=CORONAL, image_type=("ORIGINAL", "PRIMARY")))
    headers.append(_slice(50.0, orientation=SAGITTAL, image_type=("ORIGINAL", "LOCALIZER")))

    geometry = assemble_series(headers)

    assert geometry.order == (0, 2, 3, 4)
    assert set(geometry.excluded) == {1, 5}
    assert "lone slice at another orientation" in geometry.excluded[1]
    assert "LOCALIZER" in geometry.excluded[5]
    assert geometry.slice_spacing_mm == pytest.approx(3.0)
    # Only localizers: nothing to assemble.
    only = [_slice(0.0, image_type=("DERIVED", "LOCALIZER"))]
    assert _refused(only).reason_code == "only-localizers"


def test_mixed_orientations_are_refused() -> None:
    headers = _series([0.0, 3.0, 6.0]) + _series([0.0, 3.0], orientation=CORONAL)
    refusal = _refused(headers)
    assert refusal.reason_code == "mixed-orientation"
    assert "2 orientations (3, 2 slices)" in str(refusal)


def test_duplicates_with_identical_pixels_keep_one_and_others_refuse() -> None:
    headers = _series([0.0, 2.0, 2.0, 4.0])
    geometry = assemble_series(headers, pixel_hashes=["a", "b", "b", "c"])
    assert geometry.order == (0, 1, 3)
    assert geometry.excluded == {
        2: "duplicate: same position and pixels as the slice kept (instance 2)"
    }
    assert geometry.slice_spacing_mm == pytest.approx(2.0)

    different = _refused(headers, pixel_hashes=["a", "b", "x", "c"])
    assert different.reason_code == "duplicate-position"
    assert "different pixels" in str(different)
    unknown = _refused(headers)
    assert unknown.reason_code == "duplicate-position" and "not compared" in str(unknown)


def test_inconsistent_geometry_is_refused_with_its_reason() -> None:
    sizes = _series([0.0, 2.0]) + [_slice(4.0, size=(16, 12))]
    assert _refused(sizes).reason_code == "mixed-size"
    spacing = _series([0.0, 2.0]) + [_slice(4.0, pixel_spacing=(0.5, 0.5))]
    assert _refused(spacing).reason_code == "mixed-pixel-spacing"
    sheared = [_slice(2.0 * k, corner=(-100.0 + 3.0 * k, -120.0)) for k in range(4)]
    assert _refused(sheared).reason_code == "sheared-series"
    frames = _series([0.0, 2.0, 4.0])
    frames[2].FrameOfReferenceUID = "2.25.2"
    assert _refused(frames).reason_code == "mixed-frame-of-reference"
    missing = _series([0.0, 2.0, 4.0])
    del missing[1].ImagePositionPatient
    refusal = _refused(missing)
    assert refusal.reason_code == "missing-geometry"
    assert "instance 2 has no usable ImagePositionPatient" in str(refusal)
    assert _refused(_series([0.0])).reason_code == "too-few-slices"
    assert _refused([]).reason_code == "empty-series"


def _enhanced(positions: list[float]) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(positions)
    ds.Rows = ds.Columns = 16
    ds.FrameOfReferenceUID = "2.25.1"
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing = ["1.0", "1.0"]
    orientation.ImageOrientationPatient = [f"{v:g}" for v in AXIAL]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in positions:
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = ["-8", "-8", f"{z:g}"]
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def test_an_enhanced_multiframe_instance_is_a_volume_of_its_frames() -> None:
    geometry = assemble_series([_enhanced([4.0, 0.0, 2.0, 6.0])])
    assert geometry.multiframe and geometry.order == (1, 2, 0, 3)
    assert geometry.spacing_mm == pytest.approx((2.0, 1.0, 1.0))
    assert geometry.origin == pytest.approx((-8.0, -8.0, 0.0))

    mixed = _refused([_enhanced([0.0, 2.0]), _slice(4.0)])
    assert mixed.reason_code == "mixed-multiframe"
    two = _refused([_enhanced([0.0, 2.0]), _enhanced([4.0, 6.0])])
    assert two.reason_code == "multiple-multiframe"
    gap = _refused([_enhanced([0.0, 2.0, 6.0])])
    assert gap.reason_code == "missing-slice"
