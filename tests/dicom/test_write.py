"""The fast Part 10 encoder writes exactly what pydicom's dcmwrite writes."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medai.collection.deid import Deidentifier, DeidOptions
from medai.collection.pseudonymize import Pseudonymizer
from medai.dicom.read import parse_instance
from medai.dicom.synth import SynthResult, generate
from medai.dicom.write import encode_part10

BUNDLED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "image_dfl.dcm",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(tmp_path_factory.mktemp("w"), studies=8, seed=3, image_size=48, ct_slices=2)


def _pydicom_bytes(ds: pydicom.Dataset) -> bytes:
    ds.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _inputs(synth: SynthResult) -> list[tuple[str, bytes]]:
    found = [(path.name, path.read_bytes()) for path in synth.files]
    for name in BUNDLED:
        path = get_testdata_file(name, download=False)
        if path:
            found.append((name, Path(str(path)).read_bytes()))
    return found


def test_identical_to_dcmwrite_as_read(synth: SynthResult) -> None:
    for name, data in _inputs(synth):
        ds = parse_instance(data, max_bytes=1 << 30)
        expected = _pydicom_bytes(copy.deepcopy(ds))
        assert encode_part10(ds) == expected, name


def test_identical_to_dcmwrite_after_deidentification(synth: SynthResult) -> None:
    deid = Deidentifier(DeidOptions(), Pseudonymizer(b"k" * 32))
    seen_syntaxes = set()
    for name, data in _inputs(synth):
        try:
            ds = deid.deidentify(parse_instance(data, max_bytes=1 << 30))
        except Exception:  # objects the profile refuses are not written
            continue
        seen_syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        expected = _pydicom_bytes(copy.deepcopy(ds))
        assert encode_part10(ds) == expected, name
    assert len(seen_syntaxes) >= 4


def test_preamble_is_never_kept(synth: SynthResult) -> None:
    data = bytearray(synth.files[0].read_bytes())
    data[:8] = b"II*\x00TIFF"  # a dual-personality file's TIFF header
    ds = parse_instance(bytes(data), max_bytes=1 << 30)
    assert encode_part10(ds)[:132] == b"\x00" * 128 + b"DICM"


def test_file_meta_with_odd_lengths_and_other_elements_is_identical(synth: SynthResult) -> None:
    # Odd-length AE, UI and OB values take the direct path (padded as pydicom pads them);
    # a UL the direct path does not handle goes through pydicom's element writer.
    ds = parse_instance(synth.files[0].read_bytes(), max_bytes=1 << 30)
    ds.file_meta.SourceApplicationEntityTitle = "SITE_A"[:5]
    ds.file_meta.ImplementationVersionName = "ODD"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.45"
    ds.file_meta.PrivateInformation = b"\x01\x02\x03"
    ds.file_meta.add_new(0x00020200, "UR", "https://a.example")
    expected = _pydicom_bytes(copy.deepcopy(ds))
    assert encode_part10(ds) == expected
