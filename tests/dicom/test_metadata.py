"""normalized_metadata and the spelling tables, incl. every variant the generator writes."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medai.dicom.metadata import (
    BODY_PARTS,
    MANUFACTURERS,
    VIEW_POSITIONS,
    normalize_body_part,
    normalize_manufacturer,
    normalize_view_position,
    normalized_metadata,
)
from medai.dicom.read import parse_instance
from medai.dicom.synth import PROFILES, generate
from medai.errors import MissingAttribute

# Vendor spellings are invalid CS values on purpose; pydicom warns about them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# What each vendor profile of the generator writes, and what it must normalize to.
CANONICAL_MANUFACTURER = {
    "FUJIFILM Corporation": "FUJIFILM",
    "GE MEDICAL SYSTEMS": "GE",
    "SIEMENS": "SIEMENS",
    "Siemens Healthineers": "SIEMENS",
    "Philips Medical Systems": "PHILIPS",
    "Agfa-Gevaert": "AGFA",
    "TOSHIBA": "CANON",
}


def test_every_generator_spelling_is_known() -> None:
    for profile in PROFILES:
        assert normalize_body_part(profile.body_part) == "CHEST"
        assert profile.chest_manufacturer in CANONICAL_MANUFACTURER
        assert (
            normalize_manufacturer(profile.chest_manufacturer)
            == CANONICAL_MANUFACTURER[profile.chest_manufacturer]
        )
        for view in profile.view_positions:
            assert normalize_view_position(view) == view
        if profile.ct_manufacturer is not None:
            assert normalize_body_part(profile.ct_body_part) == "CHEST"
            assert (
                normalize_manufacturer(profile.ct_manufacturer)
                == CANONICAL_MANUFACTURER[profile.ct_manufacturer]
            )
    spellings = {p.body_part for p in PROFILES} | {p.ct_body_part for p in PROFILES}
    assert {"CHEST", "Chest", "THORAX", "TORAX"} <= spellings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CHEST", "CHEST"),
        ("Chest", "CHEST"),
        ("chest ", "CHEST"),
        ("THORAX", "CHEST"),
        ("Thorax", "CHEST"),
        ("TORAX", "CHEST"),
        ("Tórax", "CHEST"),
        ("LUNG", "CHEST"),
        ("Brust", "CHEST"),
        ("THORAX_PA", "CHEST"),
        ("Chest/Abdomen", "CHESTABDOMEN"),
        ("T-SPINE", "TSPINE"),
        ("HWS", "CSPINE"),
        ("Schädel", "SKULL"),
        ("elbow left", "ELBOW LEFT"),  # unknown: kept, as its upper-case key
        ("", None),
        ("  ", None),
        (None, None),
        (["CHEST", "ABDOMEN"], "CHEST"),  # a (wrongly) multi-valued element: first value
    ],
)
def test_body_part(raw: object, expected: str | None) -> None:
    assert normalize_body_part(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GE MEDICAL SYSTEMS", "GE"),
        ("GE Healthcare", "GE"),
        ("GE HEALTHCARE JAPAN", "GE"),
        ("General Electric Company", "GE"),
        ("GEMINI Imaging", "GEMINI IMAGING"),  # no word-boundary match on "GE"
        ("Siemens", "SIEMENS"),
        ("SIEMENS HEALTHINEERS AG", "SIEMENS"),
        ("Philips Healthcare", "PHILIPS"),
        ("TOSHIBA_MEC", "CANON"),
        ("CANON_MEC", "CANON"),
        ("Canon Medical Systems Corporation", "CANON"),
        ("Agfa", "AGFA"),
        ("FUJI PHOTO FILM Co., ltd.", "FUJIFILM"),
        ("Fujifilm", "FUJIFILM"),
        ("Carestream Health", "CARESTREAM"),
        ("KODAK", "CARESTREAM"),
        ("Acme Imaging", "ACME IMAGING"),
        ("", None),
        (None, None),
    ],
)
def test_manufacturer(raw: object, expected: str | None) -> None:
    assert normalize_manufacturer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PA", "PA"),
        ("pa", "PA"),
        ("P-A", "PA"),
        ("AP", "AP"),
        ("A.P.", "AP"),
        ("LL", "LL"),
        ("Left Lateral", "LL"),
        ("LATERAL", "LATERAL"),
        ("LAT", "LATERAL"),
        ("OBLIQUE", "OBLIQUE"),
        ("", None),
    ],
)
def test_view_position(raw: object, expected: str | None) -> None:
    assert normalize_view_position(raw) == expected


def test_tables_map_to_upper_case_keys_of_their_own_form() -> None:
    # Every key must be what _key produces, or no input could ever reach it.
    for table, normalize in (
        (BODY_PARTS, normalize_body_part),
        (MANUFACTURERS, normalize_manufacturer),
        (VIEW_POSITIONS, normalize_view_position),
    ):
        for key, value in table.items():
            assert normalize(key) == value, key
            assert normalize(key.lower()) == value, key


def _dataset(**values: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_normalized_metadata_fields() -> None:
    ds = _dataset(
        Modality="dx",
        BodyPartExamined="Thorax",
        ViewPosition="ap",
        Manufacturer="GE Healthcare",
        Rows=64,
        Columns=48,
        SeriesNumber="3",
        StudyDate="20240229",
    )
    meta = normalized_metadata(ds)
    assert meta.sop_class_uid == "1.2.840.10008.5.1.4.1.1.1.1"
    assert (meta.modality, meta.body_part, meta.view_position, meta.manufacturer) == (
        "DX",
        "CHEST",
        "AP",
        "GE",
    )
    assert (meta.rows, meta.columns, meta.number_of_frames) == (64, 48, 1)
    assert meta.transfer_syntax_uid == ExplicitVRLittleEndian
    assert meta.series_number == 3
    assert meta.study_date == datetime.date(2024, 2, 29)


def test_absent_and_malformed_values() -> None:
    meta = normalized_metadata(
        _dataset(StudyDate="", SeriesDate="20230105", SeriesNumber="", NumberOfFrames="0")
    )
    assert meta.study_date == datetime.date(2023, 1, 5)  # falls back to Series Date
    assert meta.series_number is None
    assert meta.number_of_frames == 1
    assert meta.modality is meta.body_part is meta.view_position is meta.manufacturer is None
    assert meta.rows is meta.columns is None
    assert normalized_metadata(_dataset(StudyDate="20231399")).study_date is None


def test_transfer_syntax_from_the_encoding_when_meta_lacks_it() -> None:
    ds = _dataset()
    del ds.file_meta.TransferSyntaxUID
    ds.set_original_encoding(True, True, "iso8859")
    assert normalized_metadata(ds).transfer_syntax_uid == ImplicitVRLittleEndian


def test_missing_sop_class() -> None:
    ds = _dataset()
    del ds.SOPClassUID
    with pytest.raises(MissingAttribute, match="SOPClassUID"):
        normalized_metadata(ds)


def test_generated_files_normalize(tmp_path: Path) -> None:
    result = generate(
        tmp_path, studies=8, seed=11, sites=("a", "b", "c", "d"), image_size=32, ct_slices=2
    )
    seen = set()
    for path in result.files:
        ds = parse_instance(path.read_bytes(), max_bytes=10**7)
        meta = normalized_metadata(ds)
        assert meta.body_part == "CHEST", ds.BodyPartExamined
        assert meta.manufacturer in set(CANONICAL_MANUFACTURER.values())
        assert meta.modality in {"CR", "DX", "CT"}
        assert meta.rows == meta.columns == 32
        assert meta.study_date is not None
        assert meta.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        seen.add((str(ds.BodyPartExamined), meta.manufacturer))
    assert len({raw for raw, _ in seen}) >= 4  # the spellings really do vary
