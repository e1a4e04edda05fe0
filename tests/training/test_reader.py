"""The reader against pydicom's own modality and VOI steps on pydicom's bundled files."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from medai.store import ObjectStore
from medai.training.reader import (
    LoadDicomFromStore,
    ReadOptions,
    read_image,
    records_from_manifest,
)


def _path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return str(path)


def _reference(ds: Dataset) -> np.ndarray:
    """pydicom's modality + VOI output mapped to [0, 1] by the window's output range."""
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    bounds = apply_voi_lut(np.array([-1e15, 1e15]), ds)
    low, high = float(bounds.min()), float(bounds.max())
    return (shown - low) / (high - low)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # rescale slope/intercept + window
        "MR_small.dcm",
        "MR_small_RLE.dcm",  # RLE Lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "693_J2KI.dcm",  # JPEG 2000, CT with rescale
    ],
)
def test_matches_pydicom_modality_and_voi(name: str) -> None:
    ds = pydicom.dcmread(_path(name))
    image = read_image(_path(name))
    assert image.dtype == np.float32
    assert image.shape == (1, int(ds.Rows), int(ds.Columns))
    assert 0.0 <= image.min() and image.max() <= 1.0
    if "WindowCenter" in ds:
        np.testing.assert_allclose(image[0], _reference(ds), atol=1e-6)


def test_bytes_and_path_read_alike() -> None:
    path = _path("CT_small.dcm")
    with open(path, "rb") as handle:
        data = handle.read()
    np.testing.assert_array_equal(read_image(data), read_image(path))


def test_compressed_equals_uncompressed() -> None:
    np.testing.assert_allclose(
        read_image(_path("MR_small_RLE.dcm")), read_image(_path("MR_small.dcm")), atol=1e-6
    )


def test_no_window_uses_full_range() -> None:
    ds = pydicom.dcmread(_path("CT_small.dcm"))
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    image = read_image(ds)
    np.testing.assert_allclose(image[0], expected, atol=1e-6)
    assert image.min() == 0.0 and image.max() == 1.0


def test_ct_window_in_hounsfield_units() -> None:
    ds = pydicom.dcmread(_path("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window, in HU after rescale
    image = read_image(ds)
    np.testing.assert_allclose(image[0], _reference(ds), atol=1e-6)
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert np.all(image[0][hu <= 40 - 200] == 0.0) and np.all(image[0][hu > 40 + 200] == 1.0)
    # The second window of a file is picked by window_index.
    ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]
    second = read_image(ds, ReadOptions(window_index=1))
    assert not np.allclose(second, image)
    assert np.allclose(read_image(ds, ReadOptions(apply_voi=False))[0].max(), 1.0)


def test_monochrome1_is_inverted() -> None:
    # pydicom bundles no MONOCHROME1 image: relabel one, so the stored values are equal.
    ds2 = pydicom.dcmread(_path("MR_small.dcm"))
    ds1 = pydicom.dcmread(_path("MR_small.dcm"))
    ds1.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(read_image(ds1), 1.0 - read_image(ds2), atol=1e-6)
    np.testing.assert_allclose(read_image(ds1)[0], 1.0 - _reference(ds2), atol=1e-6)


def test_voi_lut_sequence() -> None:
    ds = pydicom.dcmread(_path("MR_small.dcm"))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.LUTData = [min(4095, i * 32) for i in range(256)]
    ds.VOILUTSequence = [item]
    expected = apply_voi_lut(ds.pixel_array, ds) / 4095.0  # MR_small has no rescale
    np.testing.assert_allclose(read_image(ds)[0], expected, atol=1e-6)


def test_color_and_frames() -> None:
    path = _path("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(path)
    gray = read_image(path)
    assert gray.shape == (1, 100, 100)
    rgb = ds.pixel_array[0].astype(np.float64) / 255.0
    np.testing.assert_allclose(gray[0], rgb @ [0.299, 0.587, 0.114], atol=1e-6)
    channels = read_image(path, ReadOptions(frames="all", color="channels"))
    assert channels.shape == (3, 2, 100, 100)
    np.testing.assert_allclose(channels[:, 1], np.moveaxis(ds.pixel_array[1], -1, 0) / 255.0)


def test_load_from_store_transform(tmp_path: Any) -> None:
    store = ObjectStore(tmp_path / "store")
    with open(_path("MR_small.dcm"), "rb") as handle:
        key = store.put(handle.read())
    manifest = pd.DataFrame(
        {"store_key": [key], "effusion": [1.0], "nodule": [None], "site": ["site-a"]}
    )
    records = records_from_manifest(manifest, ["effusion", "nodule"], keep=["site"])
    assert records[0]["image"] == key and records[0]["site"] == "site-a"
    assert records[0]["label"][0] == 1.0 and np.isnan(records[0]["label"][1])
    loaded = LoadDicomFromStore(["image"], store)(records[0])
    np.testing.assert_array_equal(loaded["image"], read_image(_path("MR_small.dcm")))
    with pytest.raises(KeyError):
        records_from_manifest(manifest, ["missing"])
    # Without a store the value is a path or the bytes themselves.
    with open(_path("MR_small.dcm"), "rb") as handle:
        raw = LoadDicomFromStore(["image"])({"image": io.BytesIO(handle.read()).getvalue()})
    np.testing.assert_array_equal(raw["image"], loaded["image"])
