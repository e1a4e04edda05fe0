"""The geometry of one series as a volume: slice order, spacing and orientation, or why not.

:func:`assemble_series` takes the headers of one series (pydicom data sets; pixels are not
needed) and orders its slices by their position along the slice normal, the cross product of
the Image Orientation (Patient) row and column cosines, as the DICOM standard defines the
patient coordinate system (PS3.3 C.7.6.2.1.1). It refuses, with :class:`~medai.errors.
SeriesRefused` and a stable reason code, what is not one rectilinear volume:

==========================  =============================================================
reason code                 what it means
==========================  =============================================================
``empty-series``            no instance at all
``only-localizers``         every instance is a localizer (scout)
``missing-geometry``        an instance lacks Image Position/Orientation, Pixel Spacing
``invalid-orientation``     row and column cosines are not unit length and orthogonal
``mixed-multiframe``        enhanced multi-frame and single-frame instances mixed
``multiple-multiframe``     several multi-frame instances (each is its own volume)
``mixed-orientation``       slices at more than one orientation
``mixed-frame-of-reference``  slices in more than one Frame of Reference
``mixed-size``              slices of different Rows/Columns
``mixed-pixel-spacing``     slices of different Pixel Spacing
``duplicate-position``      two slices at one position with different (or unknown) pixels
``too-few-slices``          fewer slices than a volume needs (2 by default)
``sheared-series``          positions drift within the plane (gantry tilt, shifted slice)
``missing-slice``           a gap that is a whole number of slice spacings
``irregular-spacing``       spacing that varies beyond the tolerance
==========================  =============================================================

What is left out without refusing is listed in :attr:`SeriesGeometry.excluded`: localizers
(Image Type containing ``LOCALIZER``, or a lone slice at an orientation the rest of the
series does not share) and duplicates with the same pixels as the slice kept (identical
pixel hashes, e.g. the catalog's keyed pixel hash). An enhanced multi-frame instance alone
is a volume of its frames (positions from its functional groups); ``order`` then lists
frame indices.

Messages carry positions and counts only, never a value that could identify anyone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from medai.errors import SeriesRefused

__all__ = ["SeriesGeometry", "assemble_series"]

FloatArray = npt.NDArray[np.float64]

# Direction cosines that differ by less than this are one orientation (about 0.06 degrees).
_ORIENTATION_TOLERANCE = 1e-3
# Positions along the normal closer than this (mm) are one position.
_DUPLICATE_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class SeriesGeometry:
    """A series assembled into a volume.

    Attributes
    ----------
    order
        Indices into the headers given (or frame indices of one multi-frame instance), in
        slice order: increasing position along the slice normal.
    excluded
        ``{index: reason}`` of instances left out (localizers, identical duplicates).
    slice_spacing_mm
        Distance between consecutive slices along the normal.
    pixel_spacing_mm
        (row spacing, column spacing): Pixel Spacing as DICOM gives it.
    orientation
        Image Orientation (Patient): row cosines then column cosines.
    origin
        Image Position (Patient) of the first slice in ``order``.
    rows, columns
        The slices' size.
    multiframe
        True when ``order`` indexes the frames of one enhanced multi-frame instance.
    positions_mm
        Each ordered slice's position along the normal.
    """

    order: tuple[int, ...]
    excluded: dict[int, str]
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    orientation: tuple[float, float, float, float, float, float]
    origin: tuple[float, float, float]
    rows: int
    columns: int
    multiframe: bool = False
    positions_mm: tuple[float, ...] = field(default=())

    @property
    def slices(self) -> int:
        return len(self.order)

    @property
    def normal(self) -> tuple[float, float, float]:
        """The unit slice normal (row cosines x column cosines)."""
        o = np.asarray(self.orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        n = n / np.linalg.norm(n)
        return (float(n[0]), float(n[1]), float(n[2]))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing: the spacing of a ``(D, H, W)`` stack."""
        return (self.slice_spacing_mm, *self.pixel_spacing_mm)

    def affine_lps(self) -> FloatArray:
        """The 4x4 matrix from a ``(D, H, W)`` stack index (slice, row, column) to patient
        coordinates in mm (DICOM's LPS: x to the patient's left, y posterior, z superior)."""
        o = np.asarray(self.orientation, dtype=np.float64)
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(self.normal) * self.slice_spacing_mm
        affine[:3, 1] = o[3:] * self.pixel_spacing_mm[0]  # down the rows: column cosines
        affine[:3, 2] = o[:3] * self.pixel_spacing_mm[1]  # along a row: row cosines
        affine[:3, 3] = self.origin
        return affine


@dataclass(frozen=True)
class _Plane:
    index: int
    position: FloatArray
    orientation: FloatArray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    frame_of_reference: str


def _floats(value: Any, count: int, keyword: str, where: str) -> FloatArray:
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.asarray([], dtype=np.float64)
    if values.shape != (count,) or not np.isfinite(values).all():
        raise SeriesRefused(
            "missing-geometry", f"{where} has no usable {keyword} ({count} numbers expected)"
        )
    return values


def _attribute(datasets: Sequence[Dataset | None], keyword: str) -> Any:
    """The first of ``datasets`` (e.g. a frame's group, then the shared group) that has it."""
    for ds in datasets:
        if ds is not None and keyword in ds:
            return ds.get(keyword)
    return None


def _group(ds: Dataset, sequence: str, item: str) -> Dataset | None:
    if sequence not in ds or not ds[sequence].value:
        return None
    container = ds[sequence].value[0]
    if item not in container or not container[item].value:
        return None
    found: Dataset = container[item].value[0]
    return found


def _frame_group(frame: Dataset, item: str) -> Dataset | None:
    if item not in frame or not frame[item].value:
        return None
    found: Dataset = frame[item].value[0]
    return found


def _frame_count(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def _is_multiframe(ds: Dataset) -> bool:
    return _frame_count(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return any(str(value).strip().upper() == "LOCALIZER" for value in image_type)


def _size(ds: Dataset, where: str) -> tuple[int, int]:
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise SeriesRefused("missing-geometry", f"{where} has no Rows/Columns") from None


def _single_plane(ds: Dataset, index: int) -> _Plane:
    where = f"instance {index + 1}"
    rows, columns = _size(ds, where)
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", where)
    return _Plane(
        index=index,
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=rows,
        columns=columns,
        frame_of_reference=str(ds.get("FrameOfReferenceUID") or ""),
    )


def _frame_planes(ds: Dataset) -> list[_Plane]:
    """One plane per frame of an enhanced multi-frame instance (functional groups)."""
    rows, columns = _size(ds, "the multi-frame instance")
    frames = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if len(frames) != _frame_count(ds):
        raise SeriesRefused(
            "missing-geometry",
            "the multi-frame instance has no per-frame functional groups for every frame "
            "(PerFrameFunctionalGroupsSequence)",
        )
    shared_orientation = _group(ds, "SharedFunctionalGroupsSequence", "PlaneOrientationSequence")
    shared_measures = _group(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
    planes = []
    for index, frame in enumerate(frames):
        where = f"frame {index + 1} of the multi-frame instance"
        position = _attribute(
            [_frame_group(frame, "PlanePositionSequence")], "ImagePositionPatient"
        )
        orientation = _attribute(
            [_frame_group(frame, "PlaneOrientationSequence"), shared_orientation],
            "ImageOrientationPatient",
        )
        spacing = _floats(
            _attribute(
                [_frame_group(frame, "PixelMeasuresSequence"), shared_measures], "PixelSpacing"
            ),
            2,
            "PixelSpacing",
            where,
        )
        planes.append(
            _Plane(
                index=index,
                position=_floats(position, 3, "ImagePositionPatient", where),
                orientation=_floats(orientation, 6, "ImageOrientationPatient", where),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rows=rows,
                columns=columns,
                frame_of_reference=str(ds.get("FrameOfReferenceUID") or ""),
            )
        )
    return planes


def _same_orientation(a: FloatArray, b: FloatArray) -> bool:
    return bool(np.max(np.abs(a - b)) <= _ORIENTATION_TOLERANCE)


def _split_orientations(planes: list[_Plane], multiframe: bool) -> tuple[list[_Plane], list[int]]:
    """The planes of the series' orientation, and lone slices at another one (localizers)."""
    groups: list[list[_Plane]] = []
    for plane in planes:
        for group in groups:
            if _same_orientation(group[0].orientation, plane.orientation):
                group.append(plane)
                break
        else:
            groups.append([plane])
    if len(groups) == 1:
        return planes, []
    groups.sort(key=len, reverse=True)
    main, others = groups[0], groups[1:]
    if not multiframe and len(main) >= 2 and all(len(group) == 1 for group in others):
        return main, [group[0].index for group in others]
    sizes = ", ".join(str(len(group)) for group in groups)
    raise SeriesRefused(
        "mixed-orientation",
        f"the slices lie at {len(groups)} orientations ({sizes} slices): not one volume; "
        "split the series by orientation",
    )


def _check_orientation(orientation: FloatArray) -> None:
    row, column = orientation[:3], orientation[3:]
    unit = abs(np.linalg.norm(row) - 1) < 1e-2 and abs(np.linalg.norm(column) - 1) < 1e-2
    if not unit or abs(float(np.dot(row, column))) > 1e-2:
        raise SeriesRefused(
            "invalid-orientation",
            "ImageOrientationPatient's row and column cosines are not orthogonal unit vectors",
        )


def _check_uniform(planes: list[_Plane]) -> None:
    frames = {p.frame_of_reference for p in planes if p.frame_of_reference}
    if len(frames) > 1:
        raise SeriesRefused(
            "mixed-frame-of-reference",
            f"the slices belong to {len(frames)} frames of reference: their positions cannot "
            "be compared",
        )
    sizes = Counter((p.rows, p.columns) for p in planes)
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c} ({n})" for (r, c), n in sorted(sizes.items()))
        raise SeriesRefused("mixed-size", f"the slices differ in size: {shown}")
    spacings = np.asarray([p.pixel_spacing for p in planes])
    if np.any(np.abs(spacings - spacings[0]) > 1e-3 * np.abs(spacings[0]) + 1e-6):
        raise SeriesRefused(
            "mixed-pixel-spacing",
            f"the slices differ in PixelSpacing ({spacings.min():g} to {spacings.max():g} mm)",
        )


def _drop_duplicates(
    planes: list[_Plane], distances: FloatArray, pixel_hashes: Sequence[str | None] | None
) -> tuple[list[int], dict[int, str]]:
    """Positions of ``planes`` (sorted) without identical duplicates; refuse others."""
    kept: list[int] = []
    excluded: dict[int, str] = {}
    for position, plane in enumerate(planes):
        if kept and abs(distances[position] - distances[kept[-1]]) < _DUPLICATE_TOLERANCE_MM:
            first = planes[kept[-1]].index
            same = (
                pixel_hashes is not None
                and pixel_hashes[first] is not None
                and pixel_hashes[first] == pixel_hashes[plane.index]
            )
            if not same:
                why = "different pixels" if pixel_hashes is not None else "pixels not compared"
                raise SeriesRefused(
                    "duplicate-position",
                    f"two slices lie at one position ({distances[position]:.2f} mm along the "
                    f"normal) with {why}: which one belongs to the volume is unknown",
                )
            excluded[plane.index] = (
                f"duplicate: same position and pixels as the slice kept (instance {first + 1})"
            )
            continue
        kept.append(position)
    return kept, excluded


def _check_in_plane(planes: list[_Plane], normal: FloatArray) -> None:
    first = planes[0].position
    offsets = [p.position - first for p in planes]
    drift = max(float(np.linalg.norm(o - np.dot(o, normal) * normal)) for o in offsets)
    tolerance = 0.1 * min(planes[0].pixel_spacing) + 1e-3
    if drift > tolerance:
        raise SeriesRefused(
            "sheared-series",
            f"slice positions drift {drift:.2f} mm within the image plane (gantry tilt or a "
            "shifted slice): not a rectilinear volume",
        )


def _slice_spacing(distances: FloatArray, tolerance: float) -> float:
    steps = np.diff(distances)
    reference = float(steps.min())
    ratios = steps / reference
    if np.all(np.abs(ratios - 1) <= tolerance):
        return float((distances[-1] - distances[0]) / (len(distances) - 1))
    whole = np.rint(ratios)
    if np.all(np.abs(ratios - whole) <= tolerance * whole):
        gaps = [int(i) for i in np.flatnonzero(whole > 1)]
        missing = int(np.sum(whole - 1))
        at = ", ".join(f"after slice {i + 1}" for i in gaps[:3]) + (" ..." if len(gaps) > 3 else "")
        raise SeriesRefused(
            "missing-slice",
            f"{missing} slice(s) missing: gap(s) of {steps[gaps[0]]:.2f} mm where the spacing "
            f"is {reference:.2f} mm ({at} of {len(distances)})",
        )
    raise SeriesRefused(
        "irregular-spacing",
        f"the slice spacing varies from {reference:.2f} to {float(steps.max()):.2f} mm "
        f"(tolerance {tolerance:.0%})",
    )


def assemble_series(
    headers: Sequence[Dataset],
    *,
    pixel_hashes: Sequence[str | None] | None = None,
    spacing_tolerance: float = 0.05,
    min_slices: int = 2,
) -> SeriesGeometry:
    """Order the instances of one series into a volume, or refuse it with a reason.

    Parameters
    ----------
    headers
        The data sets of one series (read with ``stop_before_pixels`` is enough), in any
        order.
    pixel_hashes
        One hash of each instance's pixels (None where unknown), aligned with ``headers``:
        two slices at one position are one slice when their hashes are equal. Without
        them, any duplicate position refuses the series.
    spacing_tolerance
        How far (a fraction of the smallest step) a step between slices may differ from it.
    min_slices
        The fewest slices (after exclusions) that make a volume.

    Returns
    -------
    SeriesGeometry

    Raises
    ------
    SeriesRefused
        With one of the reason codes of the module's table.
    """
    if not headers:
        raise SeriesRefused("empty-series", "the series has no instances")
    if pixel_hashes is not None and len(pixel_hashes) != len(headers):
        raise ValueError("pixel_hashes must have one entry per header")
    excluded: dict[int, str] = {}
    for index, ds in enumerate(headers):
        if not _is_multiframe(ds) and _is_localizer(ds):
            excluded[index] = "localizer (ImageType LOCALIZER)"
    remaining = [i for i in range(len(headers)) if i not in excluded]
    if not remaining:
        raise SeriesRefused("only-localizers", "every instance of the series is a localizer")
    multi = [i for i in remaining if _is_multiframe(headers[i])]
    if multi and len(remaining) > 1:
        if len(multi) == len(remaining):
            raise SeriesRefused(
                "multiple-multiframe",
                f"the series holds {len(multi)} multi-frame instances: each is a volume of "
                "its own, not slices of one",
            )
        raise SeriesRefused(
            "mixed-multiframe",
            f"the series mixes {len(multi)} multi-frame and {len(remaining) - len(multi)} "
            "single-frame instances",
        )
    multiframe = bool(multi)
    if multiframe:
        planes = _frame_planes(headers[multi[0]])
        pixel_hashes = None  # frames of one instance: duplicates cannot be told apart
    else:
        planes = [_single_plane(headers[i], i) for i in remaining]
    planes, lone = _split_orientations(planes, multiframe)
    for index in lone:
        excluded[index] = "localizer (a lone slice at another orientation)"
    orientation = planes[0].orientation
    _check_orientation(orientation)
    _check_uniform(planes)

    normal = np.cross(orientation[:3], orientation[3:])
    normal = normal / np.linalg.norm(normal)
    planes.sort(key=lambda p: (float(np.dot(p.position, normal)), p.index))
    distances = np.asarray([float(np.dot(p.position, normal)) for p in planes])
    kept, duplicates = _drop_duplicates(planes, distances, pixel_hashes)
    excluded.update(duplicates)
    planes = [planes[k] for k in kept]
    distances = distances[kept]
    if len(planes) < min_slices:
        raise SeriesRefused(
            "too-few-slices",
            f"{len(planes)} slice(s) left where a volume needs at least {min_slices}",
        )
    _check_in_plane(planes, normal)
    spacing = _slice_spacing(distances, spacing_tolerance)
    first = planes[0]
    return SeriesGeometry(
        order=tuple(p.index for p in planes),
        excluded=dict(sorted(excluded.items())),
        slice_spacing_mm=spacing,
        pixel_spacing_mm=first.pixel_spacing,
        orientation=(
            float(orientation[0]),
            float(orientation[1]),
            float(orientation[2]),
            float(orientation[3]),
            float(orientation[4]),
            float(orientation[5]),
        ),
        origin=(float(first.position[0]), float(first.position[1]), float(first.position[2])),
        rows=first.rows,
        columns=first.columns,
        multiframe=multiframe,
        positions_mm=tuple(float(d) for d in distances),
    )
