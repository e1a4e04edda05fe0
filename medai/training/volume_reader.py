"""Read a series as one volume: slices ordered, stacked, oriented and resampled with MONAI.

The slices of a series row (``store_keys`` of a series snapshot, or the files of an upload)
are parsed, assembled by :func:`medai.dicom.series_geometry.assemble_series` (slice order
along the normal, spacing checked, localizers and identical duplicates left out, anything
else refused with :class:`~medai.errors.SeriesRefused`), decoded and stacked to
``(1, D, H, W)`` float32 in [0, 1]. Then MONAI does the geometry: the stack becomes a
``MetaTensor`` whose affine comes from the headers (Image Position/Orientation (Patient),
Pixel Spacing and the slice spacing, converted from DICOM's LPS to MONAI's RAS), turned to
one orientation whatever the acquisition plane (axes superior, posterior, left: ``"SPL"``,
so an axial series keeps its stack and its in-plane layout as a viewer shows it, with the
most inferior slice first) and, with a ``spacing_mm``, resampled by
:class:`monai.transforms.Spacing` (trilinear) to ``(z, y, x)`` mm. The orientation step is
a transpose and flips chosen from the affine, as :class:`monai.transforms.Orientation` does
(which would need nibabel, not a dependency of medai).

Intensities follow :func:`medai.training.reader.dataset_to_image`: the modality LUT
(Rescale Slope/Intercept, e.g. to Hounsfield units), then the file's window. Where some
slice has no window (or ``apply_voi`` is off), the range of the whole volume is the window,
never each slice's own: a slice must not be brightened because it holds less tissue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.config.type_definitions import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms.spatial.array import Spacing
from monai.transforms.transform import MapTransform
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from medai.dicom.series_geometry import SeriesGeometry, assemble_series
from medai.store import ObjectStore
from medai.training.reader import DicomSource, ReadOptions, dataset_to_image, read_dataset

__all__ = [
    "AXCODES",
    "LoadSeriesFromStore",
    "Volume",
    "read_series",
    "series_to_volume",
    "split_store_keys",
]

FloatVolume = npt.NDArray[np.float32]

# MONAI orientation codes (RAS convention) of every volume's axes: D superior, H posterior,
# W to the patient's left, i.e. axial slices as a viewer shows them, inferior first.
AXCODES = "SPL"
# AXCODES as (RAS world axis, direction) per array axis.
_TARGET = ((2, 1.0), (1, -1.0), (0, -1.0))
# DICOM patient coordinates are LPS; MONAI's affines are RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """One series as a volume.

    Attributes
    ----------
    array
        ``(1, D, H, W)`` float32 in [0, 1], axes as :data:`AXCODES` says.
    spacing_mm
        ``(z, y, x)`` spacing of ``array``'s axes in mm.
    affine
        The RAS affine of ``array`` (index to patient coordinates, MONAI's convention).
    geometry
        The series as assembled from its headers, before orientation and resampling.
    """

    array: FloatVolume
    spacing_mm: tuple[float, float, float]
    affine: npt.NDArray[np.float64]
    geometry: SeriesGeometry


def split_store_keys(value: str | Sequence[str]) -> list[str]:
    """A manifest's ``store_keys`` (``"\\n"``-joined) or a list of keys, as a list."""
    keys = value.split("\n") if isinstance(value, str) else [str(v) for v in value]
    return [key.strip() for key in keys if key.strip()]


def _has_voi(ds: Dataset) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _is_gray(ds: Dataset) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    return int(ds.get("SamplesPerPixel") or 1) == 1 and photometric != "PALETTE COLOR"


def _pixel_hash(ds: Dataset) -> str | None:
    data = ds.get("PixelData")
    return None if data is None else hashlib.sha256(bytes(data)).hexdigest()


def _stack(datasets: Sequence[Dataset], geometry: SeriesGeometry, opts: ReadOptions) -> FloatVolume:
    """The ordered slices as ``(D, H, W)`` float32 in [0, 1]."""
    if geometry.multiframe:
        (ds,) = datasets
        parts = [(ds, list(geometry.order))]
    else:
        parts = [(datasets[i], [0]) for i in geometry.order]
    shown = all(_has_voi(ds) for ds, _ in parts) and opts.apply_voi
    if shown or not all(_is_gray(ds) for ds, _ in parts):
        # Windowed (or colour) values have a fixed range: each slice maps on its own.
        options = ReadOptions(
            frames="all" if geometry.multiframe else "first", window_index=opts.window_index
        )
        slices: list[np.ndarray] = []
        for ds, frame_indices in parts:
            image = dataset_to_image(ds, options)[0]  # first (luma) channel
            slices.extend(image[frame_indices] if geometry.multiframe else [image])
        return np.ascontiguousarray(np.stack(slices), dtype=np.float32)
    values: list[np.ndarray] = []
    for ds, frame_indices in parts:
        raw = np.asarray(pixel_array(ds))
        modality = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        values.extend(modality[frame_indices] if geometry.multiframe else [modality])
    volume = np.stack(values)
    low, high = float(volume.min()), float(volume.max())
    unit = np.zeros_like(volume) if high <= low else (volume - low) / (high - low)
    inverted = [
        str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        for ds, _ in parts
    ]
    if all(inverted):
        unit = 1.0 - unit
    return np.ascontiguousarray(unit, dtype=np.float32)


def _orient(
    stack: FloatVolume, affine: npt.NDArray[np.float64]
) -> tuple[FloatVolume, npt.NDArray[np.float64]]:
    """``(D, H, W)`` and its RAS affine turned to :data:`AXCODES` (axes permuted, flipped)."""
    directions = np.abs(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    world_of: dict[int, int] = {}
    # Greedy, largest cosine first: an oblique axis goes to the world axis it is closest to.
    for flat in np.argsort(-directions, axis=None):
        world, axis = divmod(int(flat), 3)
        if axis not in world_of and world not in world_of.values():
            world_of[axis] = world
    source = [next(a for a, w in world_of.items() if w == target) for target, _ in _TARGET]
    index_map = np.zeros((4, 4))  # old index = index_map @ new index
    index_map[3, 3] = 1.0
    flips = []
    for new_axis, (old_axis, (world, sign)) in enumerate(zip(source, _TARGET, strict=True)):
        flip = np.sign(affine[world, old_axis]) != sign
        size = stack.shape[old_axis]
        index_map[old_axis, new_axis] = -1.0 if flip else 1.0
        index_map[old_axis, 3] = size - 1 if flip else 0.0
        if flip:
            flips.append(new_axis)
    oriented = np.transpose(stack, source)
    if flips:
        oriented = np.flip(oriented, axis=tuple(flips))
    return np.ascontiguousarray(oriented), affine @ index_map


def _pixdim(spacing_mm: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing_mm is None:
        return None
    values = [float(v) for v in spacing_mm]
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ValueError(f"spacing_mm must be three positive numbers (z, y, x), not {values}")
    return (values[0], values[1], values[2])


def series_to_volume(
    sources: Sequence[DicomSource],
    spacing_mm: Sequence[float] | None = None,
    *,
    options: ReadOptions | None = None,
) -> Volume:
    """The instances of one series (bytes, paths or data sets, any order) as a volume.

    Parameters
    ----------
    sources
        Every instance of the series (or one enhanced multi-frame instance).
    spacing_mm
        ``(z, y, x)`` mm to resample to; None keeps the series' own spacing.
    options
        ``window_index`` and ``apply_voi`` of :class:`ReadOptions` apply; slices are always
        grey (colour becomes luma).

    Returns
    -------
    Volume

    Raises
    ------
    SeriesRefused
        If the instances do not make one volume (see :mod:`medai.dicom.series_geometry`).
    """
    opts = options or ReadOptions()
    pixdim = _pixdim(spacing_mm)
    datasets = [read_dataset(source) for source in sources]
    geometry = assemble_series(datasets, pixel_hashes=[_pixel_hash(ds) for ds in datasets])
    stack = _stack(datasets, geometry, opts)
    oriented, affine = _orient(stack, _LPS_TO_RAS @ geometry.affine_lps())
    image: torch.Tensor = MetaTensor(
        torch.from_numpy(oriented[np.newaxis]), affine=torch.from_numpy(affine)
    )
    if pixdim is not None:
        resample = Spacing(pixdim, mode="bilinear", padding_mode="border", dtype=np.float32)
        image = resample(image)
    if not isinstance(image, MetaTensor):  # Spacing keeps the affine on a MetaTensor
        raise TypeError(f"MONAI Spacing returned {type(image).__name__}, not a MetaTensor")
    out_affine = image.affine.detach().cpu().numpy().astype(np.float64)
    spacing = np.linalg.norm(out_affine[:3, :3], axis=0)
    array = np.clip(image.detach().cpu().numpy(), 0.0, 1.0).astype(np.float32)
    return Volume(
        array=np.ascontiguousarray(array),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        affine=out_affine,
        geometry=geometry,
    )


def _store(store_dir: str | Path | ObjectStore) -> ObjectStore:
    return store_dir if isinstance(store_dir, ObjectStore) else ObjectStore(Path(store_dir))


def read_series(
    store_keys: str | Sequence[str],
    store_dir: str | Path | ObjectStore,
    spacing_mm: Sequence[float] | None = None,
    *,
    options: ReadOptions | None = None,
    verify: bool = True,
) -> FloatVolume:
    """A series row's volume, ``(1, D, H, W)`` float32 in [0, 1] (see :func:`series_to_volume`).

    Parameters
    ----------
    store_keys
        The ``"\\n"``-joined ``store_keys`` of a series snapshot row, or a list of keys.
    store_dir
        The object store (or its root directory).
    spacing_mm
        ``(z, y, x)`` mm to resample to, or None.
    options
        See :func:`series_to_volume`.
    verify
        Re-hash each object as it is read.
    """
    store = _store(store_dir)
    data = [store.read(key, verify=verify) for key in split_store_keys(store_keys)]
    return series_to_volume(data, spacing_mm, options=options).array


class LoadSeriesFromStore(MapTransform):
    """MONAI dictionary transform: replace each ``keys`` value (a series row's ``store_keys``)
    by its volume, ``(1, D, H, W)`` float32 in [0, 1] (see :func:`series_to_volume`).

    Parameters
    ----------
    keys
        Dictionary keys holding the ``"\\n"``-joined store keys.
    store_dir
        The object store (or its root directory).
    spacing_mm
        ``(z, y, x)`` mm to resample to; None keeps each series' own spacing.
    options
        See :func:`series_to_volume`.
    verify
        Re-hash each object as it is read (a corrupt object fails loudly).
    allow_missing_keys
        As in :class:`monai.transforms.MapTransform`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        store_dir: str | Path | ObjectStore,
        spacing_mm: Sequence[float] | None = None,
        options: ReadOptions | None = None,
        *,
        verify: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.store = _store(store_dir)
        self.spacing_mm = _pixdim(spacing_mm)
        self.options = options or ReadOptions()
        self.verify = verify

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_series(
                d[key], self.store, self.spacing_mm, options=self.options, verify=self.verify
            )
        return d
