"""parse_instance keeps the first frame it decoded, once, for the reader to skip a decode."""

from __future__ import annotations

import gc

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pixel_array

import medai.dicom.read as read_module
from medai.dicom.read import parse_instance, take_checked_frame
from medai.training.reader import dataset_to_image

LIMIT = 64 * 1024 * 1024


def _path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), name
    return path


def _bytes(name: str) -> bytes:
    with open(_path(name), "rb") as handle:
        return handle.read()


def test_compressed_grey_frame_is_handed_out_once_and_equals_a_decode() -> None:
    ds = parse_instance(_bytes("MR_small_RLE.dcm"), max_bytes=LIMIT, keep_first_frame=True)
    frame = take_checked_frame(ds)
    assert frame is not None
    np.testing.assert_array_equal(frame, pixel_array(pydicom.dcmread(_path("MR_small_RLE.dcm"))))
    assert take_checked_frame(ds) is None


def test_reader_uses_it_and_reads_the_same_image() -> None:
    data = _bytes("MR_small_RLE.dcm")
    ds = parse_instance(data, max_bytes=LIMIT, keep_first_frame=True)
    assert id(ds) in read_module._kept
    image = dataset_to_image(ds)
    assert id(ds) not in read_module._kept  # taken: the decode was skipped
    np.testing.assert_array_equal(
        image, dataset_to_image(pydicom.dcmread(_path("MR_small_RLE.dcm")))
    )


def test_changed_pixel_data_or_layout_is_not_served_from_the_kept_frame() -> None:
    data = _bytes("MR_small_RLE.dcm")
    ds = parse_instance(data, max_bytes=LIMIT, keep_first_frame=True)
    ds.PixelData = bytes(bytearray(ds.PixelData))  # equal bytes, but not the value decoded
    assert take_checked_frame(ds) is None
    ds = parse_instance(data, max_bytes=LIMIT, keep_first_frame=True)
    ds.Columns = int(ds.Columns) // 2
    assert take_checked_frame(ds) is None


def test_native_pixels_are_not_kept_and_nothing_outlives_the_data_set() -> None:
    ds = parse_instance(_bytes("MR_small.dcm"), max_bytes=LIMIT, keep_first_frame=True)
    assert take_checked_frame(ds) is None
    ds = parse_instance(_bytes("MR_small_RLE.dcm"), max_bytes=LIMIT, keep_first_frame=True)
    key = id(ds)
    assert key in read_module._kept
    del ds
    gc.collect()
    assert key not in read_module._kept


def test_frames_kept_stay_within_the_budget(monkeypatch: object) -> None:
    data = _bytes("MR_small_RLE.dcm")
    frame_bytes = 64 * 64 * 2
    monkeypatch.setattr(read_module, "KEPT_FRAMES_BYTES", 3 * frame_bytes)  # type: ignore[attr-defined]
    kept = [parse_instance(data, max_bytes=LIMIT, keep_first_frame=True) for _ in range(5)]
    assert read_module._kept_bytes <= 3 * frame_bytes
    assert [take_checked_frame(ds) is not None for ds in kept] == [False, False, True, True, True]


def test_ingest_keeps_no_frame() -> None:
    # Ingest parses without asking for the frame: nothing is held beside its data sets.
    ds = parse_instance(_bytes("MR_small_RLE.dcm"), max_bytes=LIMIT)
    assert take_checked_frame(ds) is None
