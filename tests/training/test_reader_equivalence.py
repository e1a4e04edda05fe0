"""The reader's lookup-table path gives the numbers of the steps run over every pixel.

The reference below is the display pipeline applied pixel by pixel in float64 with
pydicom's own functions (what medai's reader did before it used tables); every case of
the contract (no window, LINEAR, LINEAR_EXACT, SIGMOID, VOI LUT sequence, rescale,
MONOCHROME1, signed values, values too spread for a table) must stay within 1e-6 of it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from medai.training.reader import ReadOptions, dataset_to_image


def _reference(ds: Dataset, opts: ReadOptions) -> np.ndarray:
    stored = ds.pixel_array
    modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if opts.apply_voi and has_voi:
        lut = "VOILUTSequence" in ds
        voi_input = np.rint(modality).astype(np.int64) if lut else modality
        shown = np.asarray(apply_voi_lut(voi_input, ds), np.float64)
        if lut:
            entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
            probe = np.arange(first, first + entries)
        else:
            probe = np.array([-1e15, 1e15])
        with np.errstate(over="ignore"):
            bounds = np.asarray(apply_voi_lut(probe, ds), np.float64)
        low, high = bounds.min(), bounds.max()
    else:
        shown, low, high = modality, modality.min(), modality.max()
    unit = (shown - low) / (high - low)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    clipped: np.ndarray = np.clip(unit, 0.0, 1.0)[np.newaxis]
    return clipped


def _image(pixels: np.ndarray, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    signed = pixels.dtype.kind == "i"
    bits = pixels.dtype.itemsize * 8
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def _ramp(dtype: str, low: int, high: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(low, high, size=(40, 48), endpoint=True).astype(dtype)


def _voi_lut() -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [256, -100, 16]
    item.LUTData = [int(v) for v in np.linspace(0, 65535, 256) ** 1.0]
    return Sequence([item])


CASES: dict[str, Callable[[], Dataset]] = {
    "no window": lambda: _image(_ramp("uint16", 100, 3000)),
    "no window, rescaled": lambda: _image(
        _ramp("int16", -1024, 2000), RescaleSlope="0.5", RescaleIntercept="-20"
    ),
    "no window, negative slope": lambda: _image(
        _ramp("uint16", 0, 4095), RescaleSlope="-2", RescaleIntercept="7"
    ),
    "LINEAR": lambda: _image(_ramp("uint16", 0, 4095), WindowCenter="2047", WindowWidth="4095"),
    "LINEAR, narrow, rescaled CT": lambda: _image(
        _ramp("int16", -2000, 2000),
        RescaleSlope="1",
        RescaleIntercept="-1024",
        WindowCenter="40",
        WindowWidth="3",
    ),
    "LINEAR, width 1": lambda: _image(_ramp("uint16", 0, 50), WindowCenter="20", WindowWidth="1"),
    "LINEAR_EXACT": lambda: _image(
        _ramp("uint16", 0, 4095),
        WindowCenter="1000.5",
        WindowWidth="700.25",
        VOILUTFunction="LINEAR_EXACT",
    ),
    "SIGMOID": lambda: _image(
        _ramp("uint16", 0, 4095), WindowCenter="1500", WindowWidth="800", VOILUTFunction="SIGMOID"
    ),
    "VOI LUT sequence": lambda: _image(_ramp("int16", -300, 400), VOILUTSequence=_voi_lut()),
    "MONOCHROME1": lambda: _image(
        _ramp("uint16", 0, 4095),
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter="2047",
        WindowWidth="4095",
    ),
    "MONOCHROME1, no window": lambda: _image(
        _ramp("uint8", 3, 250), PhotometricInterpretation="MONOCHROME1"
    ),
    "too spread for a table": lambda: _image(
        _ramp("int32", -(2**30), 2**30), WindowCenter="0", WindowWidth="1e9"
    ),
    "constant": lambda: _image(np.full((8, 8), 9, np.uint16)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("apply_voi", [True, False])
def test_same_numbers_as_the_steps_over_every_pixel(case: str, apply_voi: bool) -> None:
    opts = ReadOptions(apply_voi=apply_voi)
    expected = _reference(CASES[case](), opts) if case != "constant" else None
    image = dataset_to_image(CASES[case](), opts)
    assert image.dtype == np.float32 and image.flags.c_contiguous
    if expected is None:  # one value throughout: no range to map, all black
        assert not image.any()
        return
    assert image.shape == expected.shape
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)
    assert image.min() < 0.5 < image.max() or case.startswith("LINEAR, width 1")
