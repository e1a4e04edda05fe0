"""Read a DICOM instance to a float32 image in [0, 1], as a radiologist's viewer shows it.

The display pipeline of PS3.3 C.11 / PS3.4 N.2, with pydicom doing each step:

1. decode the pixel data (compressed transfer syntaxes through the installed pylibjpeg
   plugins; YBR colour is converted to RGB by pydicom);
2. modality LUT or Rescale Slope/Intercept (:func:`pydicom.pixels.apply_modality_lut`),
   giving modality units (e.g. Hounsfield units);
3. VOI LUT or window centre/width (:func:`pydicom.pixels.apply_voi_lut`, the first
   window by default); where the file has neither, a full-range window over the
   image's own minimum and maximum, as viewers do;
4. the VOI output range mapped to [0, 1], and MONOCHROME1 inverted so that a higher
   value is always brighter (bone is white on every radiograph the network sees).

Colour images (RGB, YBR, PALETTE COLOR) skip steps 2-3: they are already display
values. By default they become one luma channel (ITU-R BT.601 weights), because the
pilot models are single-channel; ``color="channels"`` keeps R, G, B as three channels.

Multi-frame instances give their first frame by default (only that frame is
decoded); ``frames="all"`` returns every frame as a depth axis, the layout MONAI's
3-D networks expect. Per-frame windows of enhanced multi-frame objects (functional
groups) are not applied: the top-level VOI attributes are used for every frame.

The output is always channel-first: ``(C, H, W)``, or ``(C, F, H, W)`` with all frames.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from monai.config.type_definitions import KeysCollection
from monai.transforms.transform import MapTransform
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from medai.dicom.read import take_checked_frame
from medai.store import ObjectStore

__all__ = [
    "DicomSource",
    "LoadDicomFromStore",
    "ReadOptions",
    "dataset_to_image",
    "read_dataset",
    "read_image",
    "records_from_manifest",
]

FloatImage = npt.NDArray[np.float32]
DicomSource = bytes | str | os.PathLike[str] | Dataset

_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
# ITU-R BT.601 luma, the weights of every DICOM viewer's colour-to-grey conversion.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# Probe values far outside any stored range: the VOI step maps them to its output bounds.
_PROBE = np.array([-1e15, 1e15], dtype=np.float64)
# The most entries of a lookup table of stored values (see _gray_to_unit): 16-bit images.
_TABLE_MAX = 1 << 16


@dataclass(frozen=True)
class ReadOptions:
    """How to turn an instance into an image.

    Attributes
    ----------
    frames
        ``"first"`` (default; only the first frame is decoded) or ``"all"``.
    color
        ``"gray"`` (default; colour images become one luma channel) or ``"channels"``
        (colour images keep three channels; grey ones still have one).
    window_index
        Which of several VOI windows / VOI LUTs to apply (the first by default).
    apply_voi
        Apply the file's VOI LUT / window. When False, or when the file has none, the
        full range of the image (its minimum to its maximum) is the window.
    """

    frames: Literal["first", "all"] = "first"
    color: Literal["gray", "channels"] = "gray"
    window_index: int = 0
    apply_voi: bool = True


def read_dataset(source: DicomSource) -> Dataset:
    """Parse ``source`` (bytes, a path or an already parsed data set) with pydicom.

    Parameters
    ----------
    source
        The instance.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    if isinstance(source, Dataset):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        # force: raw data sets without a preamble are accepted, as at ingest.
        return dcmread(io.BytesIO(bytes(source)), force=True)
    return dcmread(Path(source), force=True)


def read_image(source: DicomSource, options: ReadOptions | None = None) -> FloatImage:
    """Read an instance to a float32 channel-first image in [0, 1].

    Parameters
    ----------
    source
        Bytes of a DICOM file, its path, or a parsed data set.
    options
        See :class:`ReadOptions`.

    Returns
    -------
    numpy.ndarray
        float32, ``(C, H, W)`` (or ``(C, F, H, W)`` with ``frames="all"``), in [0, 1],
        higher is brighter.
    """
    return dataset_to_image(read_dataset(source), options)


def dataset_to_image(ds: Dataset, options: ReadOptions | None = None) -> FloatImage:
    """Like :func:`read_image`, from a parsed data set."""
    opts = options or ReadOptions()
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    # Decode only the first frame where that is all we need (a large cine loop otherwise
    # costs its whole decode for one image).
    index = 0 if opts.frames == "first" and frames > 1 else None
    # The first frame parse_instance already decoded to check the data, where it kept it.
    kept = take_checked_frame(ds) if frames == 1 or index == 0 else None
    raw = np.asarray(pixel_array(ds, index=index)) if kept is None else kept
    # pydicom drops the frame axis for one frame; put it back so every path sees F first.
    stacked = raw if (frames > 1 and index is None) else raw[np.newaxis, ...]

    if photometric == "PALETTE COLOR":
        # The palette's output depth is the third value of its descriptor (8 or 16).
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        image = _color_to_unit(np.asarray(apply_color_lut(stacked, ds)), bits=bits, opts=opts)
    elif samples > 1:
        image = _color_to_unit(stacked, bits=int(ds.get("BitsStored") or 8), opts=opts)
    else:
        # Already float32 in [0, 1]; MONOCHROME1 inverted so that higher is brighter.
        gray = _gray_to_unit(stacked, ds, opts, invert=photometric == "MONOCHROME1")
        return gray[:1] if opts.frames == "first" else gray[np.newaxis]  # (1, H, W) | (1, F, H, W)

    # (F, C, H, W) -> (C, H, W) for one frame, (C, F, H, W) for all.
    if opts.frames == "first":
        out = image[0]
    else:
        out = np.moveaxis(image, 0, 1)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _gray_to_unit(
    stored: np.ndarray, ds: Dataset, opts: ReadOptions, *, invert: bool
) -> FloatImage:
    """Stored values ``(F, H, W)`` -> float32 [0, 1] through the modality and VOI steps.

    Every step is a function of one stored value, except the full-range window, whose
    bounds are the image's own extremes. So integer images with at most 65536 distinct
    possible values go through a table: the steps run (in float64, through the same
    pydicom calls) over each value from the smallest needed to the largest present, and
    the image looks its values up. That costs a few thousand evaluations instead of one
    per pixel, and gives the same numbers as running the steps over the image (which is
    what happens to float and 32-bit images).
    """
    span = _table_span(stored)
    if span is None:
        # Over the image itself: its extremes are those of its modality values.
        return _unit_values(stored, ds, opts, invert=invert, extremes=_min_max)
    start, stop = span
    table = _unit_values(
        np.arange(start, stop, dtype=stored.dtype),
        ds,
        opts,
        invert=invert,
        extremes=lambda modality: _present_extremes(modality, stored, start, ds),
    )
    indices = stored if start == 0 else np.subtract(stored, start, dtype=np.intp)
    return np.take(table, indices)


def _table_span(stored: np.ndarray) -> tuple[int, int] | None:
    """``[start, stop)``: the stored values a lookup table covers; None: no table."""
    if stored.dtype.kind not in "iu" or stored.size == 0:
        return None
    low, high = int(stored.min()), int(stored.max())
    # From 0 where that is possible: the image then indexes the table directly.
    start = 0 if low >= 0 and high < _TABLE_MAX else low
    if high - start >= _TABLE_MAX:
        return None
    return start, high + 1


def _present_extremes(
    modality: np.ndarray, stored: np.ndarray, start: int, ds: Dataset
) -> tuple[float, float]:
    """The extremes of the modality values of ``stored``, from their table ``modality``."""
    if not ds.get("ModalityLUTSequence"):
        # No LUT: identity or ``value * slope + intercept``, monotonic even as rounded, so
        # the extremes lie at the smallest and largest stored values.
        ends = modality[[int(stored.min()) - start, int(stored.max()) - start]]
        return float(ends.min()), float(ends.max())
    present = np.zeros(modality.shape, dtype=bool)
    present[(stored if start == 0 else np.subtract(stored, start, dtype=np.intp)).ravel()] = True
    return _min_max(modality[present])


def _min_max(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def _unit_values(
    stored: np.ndarray,
    ds: Dataset,
    opts: ReadOptions,
    *,
    invert: bool,
    extremes: Callable[[np.ndarray], tuple[float, float]],
) -> FloatImage:
    """The modality and VOI steps, the [0, 1] mapping and MONOCHROME1's inversion.

    Element by element in float64, except ``extremes``: the smallest and largest modality
    value of the image (its window when it has no other), given the modality values of
    ``stored``.
    """
    modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if opts.apply_voi and has_voi:
        # A VOI LUT is indexed by integer input values; rescaled values are floats.
        voi_input = np.rint(modality).astype(np.int64) if "VOILUTSequence" in ds else modality
        # A SIGMOID window saturates far from its centre (a table spans such values).
        with np.errstate(over="ignore"):
            shown = np.asarray(apply_voi_lut(voi_input, ds, index=opts.window_index), np.float64)
            # The VOI output range: what the lowest and highest possible inputs map to (for
            # a window, pydicom's y_min/y_max; for a LUT, its first and last entries).
            probe = apply_voi_lut(_voi_probe(ds, opts.window_index), ds, index=opts.window_index)
        bounds = np.asarray(probe, np.float64)
        low, high = float(bounds.min()), float(bounds.max())
    else:
        shown = modality
        low, high = extremes(modality)
    unit = np.zeros_like(shown) if high <= low else (shown - low) / (high - low)
    if invert:
        unit = 1.0 - unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def _voi_probe(ds: Dataset, index: int) -> np.ndarray:
    """Inputs whose VOI outputs span the VOI output range."""
    if "VOILUTSequence" in ds:
        # A LUT maps integer inputs; every entry is reachable from its input range.
        entries, first = (int(v) for v in ds.VOILUTSequence[index].LUTDescriptor[:2])
        entries = entries or 2**16  # 0 means 65536 entries (PS3.3 C.11.2.1.1)
        return np.arange(first, first + entries, dtype=np.int64)
    return _PROBE.copy()


def _color_to_unit(rgb: np.ndarray, *, bits: int, opts: ReadOptions) -> np.ndarray:
    """RGB values ``(F, H, W, 3)`` of ``bits`` bits -> ``(F, C, H, W)`` in [0, 1]."""
    unit = rgb.astype(np.float64) / float(2**bits - 1)
    if opts.color == "gray":
        return np.asarray(unit @ _LUMA)[:, np.newaxis]
    return np.moveaxis(unit, -1, 1)


class LoadDicomFromStore(MapTransform):
    """MONAI dictionary transform: replace each ``keys`` value by its decoded image.

    With a ``store``, each value is a store key (the ``store_key`` column of a dataset
    manifest) and the bytes come from :meth:`medai.store.ObjectStore.read`; without one,
    each value is a path or the bytes of a file. The image is channel-first float32 in
    [0, 1] (see :func:`read_image`).

    Parameters
    ----------
    keys
        Dictionary keys holding the store keys (or paths / bytes).
    store
        The object store, or None.
    options
        See :class:`ReadOptions`.
    verify
        Re-hash each object as it is read (on by default: a corrupt object fails loudly
        instead of training on garbage).
    allow_missing_keys
        As in :class:`monai.transforms.MapTransform`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        store: ObjectStore | None = None,
        options: ReadOptions | None = None,
        *,
        verify: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.store = store
        self.options = options or ReadOptions()
        self.verify = verify

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if self.store is not None:
                value = self.store.read(str(value), verify=self.verify)
            d[key] = read_image(value, self.options)
        return d


def records_from_manifest(
    manifest: Any,
    labels: Sequence[str],
    *,
    image_key: str = "image",
    label_key: str = "label",
    store_key_column: str = "store_key",
    keep: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Turn a manifest DataFrame into MONAI data dictionaries.

    Parameters
    ----------
    manifest
        A pandas DataFrame with ``store_key_column`` and one column per label.
    labels
        The label columns, in the order of the network's outputs.
    image_key, label_key
        Keys of the image (the store key, decoded later by :class:`LoadDicomFromStore`)
        and of the label vector in each dictionary.
    store_key_column
        Column holding the store key. When it is ``store_key`` and the manifest has
        ``store_keys`` (a series snapshot), the series' ``"\n"``-joined store keys are
        taken instead, for :class:`medai.training.volume_reader.LoadSeriesFromStore`.
    keep
        Further columns copied as they are (e.g. ``site``, ``patient``).

    Returns
    -------
    list of dict
        One per row: ``{image_key: store key, label_key: float32 vector, **keep}``.
        A missing label is NaN, for the loss to mask.
    """
    if store_key_column == "store_key" and "store_keys" in manifest.columns:
        store_key_column = "store_keys"
    missing = [c for c in (store_key_column, *labels, *keep) if c not in manifest.columns]
    if missing:
        raise KeyError(f"the manifest lacks the columns {missing}")
    label_values = manifest[list(labels)].to_numpy(dtype=np.float32, na_value=np.nan)
    keys = manifest[store_key_column].astype(str).tolist()
    kept = {column: manifest[column].tolist() for column in keep}
    records: list[dict[str, Any]] = []
    for row, key in enumerate(keys):
        record: dict[str, Any] = {image_key: key, label_key: label_values[row].copy()}
        for column, values in kept.items():
            record[column] = values[row]
        records.append(record)
    return records
