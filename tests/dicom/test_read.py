"""parse_instance: every way an offered file can be bad, and real files in many syntaxes."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

import medai.dicom.read as read_module
from medai.dicom.read import REQUIRED_UIDS, parse_instance
from medai.dicom.synth import make_ct_slice
from medai.errors import (
    MissingAttribute,
    NotDicom,
    Rejected,
    TooLarge,
    TruncatedDicom,
    UndecodableTransferSyntax,
)

# The inputs here are broken on purpose; pydicom's warnings about them are expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LIMIT = 16 * 1024 * 1024
PATIENT_NAME = "QUIMBY^ROSALIND"
PATIENT_ID = "ID-7730142"


def _bytes(ds: Dataset, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def _ct(syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = make_ct_slice(rows=32, columns=32, seed=3)
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


@pytest.fixture
def ct_bytes() -> bytes:
    return _bytes(_ct(), enforce_file_format=True)


def _value_offset(data: bytes, keyword: str) -> int:
    """Where the value of top-level ``keyword`` starts in ``data`` (a Part 10 file)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    element = ds.get_item(keyword)
    return int(element.value_tell)  # type: ignore[union-attr]


# -- real files ----------------------------------------------------------------------------

BUNDLED = {
    "CT_small.dcm": ExplicitVRLittleEndian,
    "MR_small.dcm": ExplicitVRLittleEndian,
    "MR_small_implicit.dcm": ImplicitVRLittleEndian,
    "MR_small_bigendian.dcm": ExplicitVRBigEndian,
    "MR_small_RLE.dcm": RLELossless,
    "MR_small_jp2klossless.dcm": JPEG2000Lossless,
    "MR_small_jpeg_ls_lossless.dcm": JPEGLSLossless,
    "JPEG2000.dcm": JPEG2000,
    "SC_rgb_jpeg_gdcm.dcm": JPEGLosslessSV1,
    "SC_rgb_rle_2frame.dcm": RLELossless,
    "SC_ybr_full_422_uncompressed.dcm": ExplicitVRLittleEndian,
    "image_dfl.dcm": DeflatedExplicitVRLittleEndian,
    "rtplan.dcm": ImplicitVRLittleEndian,  # no pixel data
    "ExplVR_LitEndNoMeta.dcm": ExplicitVRLittleEndian,  # no preamble, no file meta
    "ExplVR_BigEndNoMeta.dcm": ExplicitVRBigEndian,
    "examples_overlay.dcm": ExplicitVRLittleEndian,
}


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_files_parse_in_their_transfer_syntax(name: str) -> None:
    data = Path(get_testdata_file(name, download=False)).read_bytes()  # type: ignore[arg-type]
    with config.strict_reading():
        ds = parse_instance(data, max_bytes=LIMIT)
    assert ds.file_meta.TransferSyntaxUID == BUNDLED[name]
    reference = pydicom.dcmread(io.BytesIO(data), force=True)
    assert ds.SOPInstanceUID == reference.SOPInstanceUID
    # Kept where the file has them (rtplan.dcm's differ from its data set), else filled in.
    meta = reference.file_meta
    assert ds.file_meta.MediaStorageSOPInstanceUID == meta.get(
        "MediaStorageSOPInstanceUID", reference.SOPInstanceUID
    )
    assert ds.file_meta.MediaStorageSOPClassUID == meta.get(
        "MediaStorageSOPClassUID", reference.SOPClassUID
    )


def test_file_without_preamble_but_with_prefix_and_meta(ct_bytes: bytes) -> None:
    ds = parse_instance(ct_bytes[128:], max_bytes=LIMIT)
    assert ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(ct_bytes)).SOPInstanceUID


@pytest.mark.parametrize("implicit", [True, False])
def test_raw_data_set_without_file_meta_gets_its_transfer_syntax_inferred(
    implicit: bool,
) -> None:
    ds = _ct()
    del ds.file_meta
    data = _bytes(ds, implicit_vr=implicit, little_endian=True)
    assert data[:2] == b"\x08\x00" and b"DICM" not in data[:200]
    parsed = parse_instance(data, max_bytes=LIMIT)
    expected = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert parsed.file_meta.TransferSyntaxUID == expected
    assert parsed.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert parsed.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    # The dataset is complete: what was written can be written again as a Part 10 file.
    again = pydicom.dcmread(io.BytesIO(_bytes(parsed, enforce_file_format=True)))
    assert again.PixelData == ds.PixelData


def test_deflated_file_parses(ct_bytes: bytes) -> None:
    data = _bytes(_ct(DeflatedExplicitVRLittleEndian), enforce_file_format=True)
    assert PATIENT_NAME.encode() not in data  # really deflated
    ds = parse_instance(data, max_bytes=LIMIT)
    assert ds.PatientName == PATIENT_NAME
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(ct_bytes)).PixelData


def test_native_pixel_data_is_never_decoded(
    ct_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("native pixel data was decoded")

    monkeypatch.setattr(read_module, "pixel_array", refuse)
    ds = parse_instance(ct_bytes, max_bytes=LIMIT)
    assert len(ds.PixelData) == 32 * 32 * 2


# -- not DICOM ----------------------------------------------------------------------------

NOT_DICOM = {
    "empty": b"",
    "text": b"Radiology report\nNo acute findings.\n" * 10,
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200),
    "zip": b"PK\x03\x04" + bytes(300),
    "json": b'{"00100010": {"vr": "PN"}}',
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "html": b"<html><body>login</body></html>" * 5,
}


@pytest.mark.parametrize("name", sorted(NOT_DICOM))
def test_not_dicom(name: str) -> None:
    with pytest.raises(NotDicom):
        parse_instance(NOT_DICOM[name], max_bytes=LIMIT)


def test_bundled_non_dicom_files_are_not_dicom() -> None:
    for name in ("README.txt", "crayons.icc", "zipMR.gz", "test1.json"):
        data = Path(get_testdata_file(name, download=False)).read_bytes()  # type: ignore[arg-type]
        with pytest.raises(NotDicom):
            parse_instance(data, max_bytes=LIMIT)


# -- truncated ------------------------------------------------------------------------------


def test_truncated_at_chosen_offsets(ct_bytes: bytes) -> None:
    name_at = _value_offset(ct_bytes, "PatientName")
    pixels_at = _value_offset(ct_bytes, "PixelData")
    offsets = {
        "inside the file meta": 150,
        "inside the patient name": name_at + 3,
        "inside an element header": name_at - 5,
        "after the pixel data header": pixels_at,
        "inside the pixel data": pixels_at + 1000,
        "one byte short": len(ct_bytes) - 1,
    }
    for where, offset in offsets.items():
        with pytest.raises(TruncatedDicom):
            parse_instance(ct_bytes[:offset], max_bytes=LIMIT)
        assert where  # names the case in a failure's traceback


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_no_cut_is_accepted(syntax: str) -> None:
    ds = _ct()
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    data = _bytes(ds, enforce_file_format=True)
    parse_instance(data, max_bytes=LIMIT)
    for offset in range(1, len(data), 7):
        with pytest.raises(Rejected):
            parse_instance(data[:offset], max_bytes=LIMIT)


def test_pixel_data_shorter_than_the_image_needs() -> None:
    ds = _ct()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # complete element, too short
    with pytest.raises(TruncatedDicom, match="pixel data is shorter"):
        parse_instance(_bytes(ds, enforce_file_format=True), max_bytes=LIMIT)


def test_deflated_file_cut_short() -> None:
    data = _bytes(_ct(DeflatedExplicitVRLittleEndian), enforce_file_format=True)
    with pytest.raises(TruncatedDicom):
        parse_instance(data[: len(data) - 20], max_bytes=LIMIT)


def test_image_without_pixel_data_is_truncated() -> None:
    ds = _ct()
    del ds.PixelData
    with pytest.raises(TruncatedDicom, match="no pixel data"):
        parse_instance(_bytes(ds, enforce_file_format=True), max_bytes=LIMIT)


# -- missing attributes ---------------------------------------------------------------------


@pytest.mark.parametrize("keyword", REQUIRED_UIDS)
@pytest.mark.parametrize("value", [None, "", "1.2.03.4", "abc", "1.2." + "3" * 70])
def test_missing_or_invalid_uid(keyword: str, value: str | None) -> None:
    ds = _ct()
    if value is None:
        delattr(ds, keyword)
    else:
        ds[keyword].value = value
    with pytest.raises(MissingAttribute, match=keyword):
        parse_instance(_bytes(ds, enforce_file_format=False), max_bytes=LIMIT)


# -- too large ------------------------------------------------------------------------------


def test_instance_over_the_limit(ct_bytes: bytes) -> None:
    with pytest.raises(TooLarge):
        parse_instance(ct_bytes, max_bytes=len(ct_bytes) - 1)
    parse_instance(ct_bytes, max_bytes=len(ct_bytes))


@pytest.mark.parametrize("implicit", [False, True])
def test_absurd_element_length_is_too_large_and_never_allocated(implicit: bool) -> None:
    ds = _ct(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    data = bytearray(_bytes(ds, enforce_file_format=True))
    at = _value_offset(bytes(data), "PatientName" if implicit else "PixelData") - 4
    struct.pack_into("<L", data, at, 0xFFFFFFF0)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="declares a length"):
            parse_instance(bytes(data), max_bytes=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(data) + 2_000_000


def test_deflate_bomb_is_too_large() -> None:
    header = _bytes(_ct(DeflatedExplicitVRLittleEndian), enforce_file_format=True)
    meta_end = header.index(b"\x02\x00\x10\x00UI") + 8 + len(DeflatedExplicitVRLittleEndian)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = compressor.compress(b"\x08\x00\x16\x00UI\x00\x00" + bytes(64 * 1024 * 1024))
    data = header[:meta_end] + bomb + compressor.flush()
    assert len(data) < 1024 * 1024
    with pytest.raises(TooLarge, match="inflates"):
        parse_instance(data, max_bytes=8 * 1024 * 1024)


# -- undecodable ----------------------------------------------------------------------------


PRIVATE_SYNTAX = "1.3.46.670589.33.1.4.1"  # a vendor's own, unpublished syntax


def _private_syntax_bytes() -> bytes:
    return _bytes(
        _ct(PRIVATE_SYNTAX), enforce_file_format=True, implicit_vr=False, little_endian=True
    )


def test_private_transfer_syntax() -> None:
    with pytest.raises(UndecodableTransferSyntax, match="private or unknown"):
        parse_instance(_private_syntax_bytes(), max_bytes=LIMIT)


def test_transfer_syntax_without_any_decoder() -> None:
    ds = _ct(MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(400)])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UndecodableTransferSyntax, match="MPEG2"):
        parse_instance(_bytes(ds, enforce_file_format=True), max_bytes=LIMIT)


@pytest.mark.parametrize(
    "name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"]
)
def test_corrupt_compressed_pixel_data(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name, download=False))
    fragment = bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8))
    ds.PixelData = encapsulate([fragment])
    data = _bytes(ds, enforce_file_format=True)
    with pytest.raises(UndecodableTransferSyntax, match="could not be decoded"):
        parse_instance(data, max_bytes=LIMIT)


def test_encapsulated_data_under_a_native_syntax() -> None:
    data = Path(get_testdata_file("MR_small_RLE.dcm", download=False)).read_bytes()  # type: ignore[arg-type]
    # Same length, so the file stays well formed; only the stated syntax is wrong.
    data = data.replace(b"1.2.840.10008.1.2.5\x00", b"1.2.840.10008.1.2.1\x00", 1)
    with pytest.raises(UndecodableTransferSyntax, match="encapsulated"):
        parse_instance(data, max_bytes=LIMIT)


# -- messages -------------------------------------------------------------------------------


def test_messages_hold_no_identifying_values(ct_bytes: bytes) -> None:
    missing = _ct()
    missing.StudyInstanceUID = ""
    bad = {
        "truncated": ct_bytes[: len(ct_bytes) // 2],
        "missing": _bytes(missing, enforce_file_format=True),
        "undecodable": _private_syntax_bytes(),
        "too large": ct_bytes,
    }
    uids = [str(pydicom.dcmread(io.BytesIO(ct_bytes))[k].value) for k in REQUIRED_UIDS]
    for data in bad.values():
        with pytest.raises(Rejected) as caught:
            parse_instance(data, max_bytes=len(ct_bytes) - 1 if data is ct_bytes else LIMIT)
        message = str(caught.value)
        for value in (PATIENT_NAME, "QUIMBY", PATIENT_ID, *uids):
            assert value not in message
        assert len(message) > 20


def test_trailing_zero_padding_is_tolerated(ct_bytes: bytes) -> None:
    parse_instance(ct_bytes + b"\x00" * 3, max_bytes=LIMIT)
    with pytest.raises(TruncatedDicom):
        parse_instance(ct_bytes + b"\xe0\x7f\x10", max_bytes=LIMIT)
