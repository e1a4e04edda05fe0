"""Tests for medai.collection.deid: PHI removal, pseudonym consistency, pixels, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import numpy as np
import pytest
from pydicom import Dataset, config, dcmread
from pydicom._uid_dict import UID_dictionary
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from medai.collection.deid import Deidentifier, DeidOptions
from medai.collection.deid.deidentifier import IMPLEMENTATION_CLASS_UID
from medai.collection.deid.descriptors import DescriptorCleaner, cleaner_for, shift_date
from medai.collection.deid.vocabulary import load_vocabulary
from medai.collection.pseudonymize import Pseudonymizer
from medai.errors import BurnedInAnnotation, CannotDeidentify, UnsupportedObject
from tests.utils.deid_factories import PHI_STRINGS, PRIVATE_SAFE, make_ct, read, write

KEY = bytes(range(32))
PSEUDO = Pseudonymizer(KEY)
UID_ROOT = "1.2.826.0.1.3680043.8.498."


@pytest.fixture(autouse=True)
def strict_values(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every value medai writes must be valid for its VR."""
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)
    yield


def deid(ds: Dataset, options: DeidOptions | None = None) -> Dataset:
    return Deidentifier(options or DeidOptions(), PSEUDO).deidentify(ds)


def _uids(ds: Dataset) -> Iterator[str]:
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
            yield from (str(v) for v in values)


@pytest.mark.parametrize("syntax", [None, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_no_planted_phi_survives_anywhere_in_the_bytes(syntax: UID | None) -> None:
    ds = make_ct()
    original_uids = {u for u in _uids(ds) if not u.startswith("1.2.840.10008.")}
    if syntax is not None:  # read from a file: elements arrive undecoded (raw)
        ds.file_meta.TransferSyntaxUID = syntax
        ds = read(write(ds))
        assert ds.original_encoding == (syntax.is_implicit_VR, True)
    out = write(deid(ds))
    assert read(out).DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    for text in PHI_STRINGS:
        for variant in {text, text.upper(), text.lower()}:
            assert variant.encode("latin-1") not in out, f"{variant!r} survived"
    for uid in original_uids:
        assert uid.encode() not in out, f"UID {uid} survived"


def test_what_the_campaign_keeps_and_cleans() -> None:
    out = read(write(deid(make_ct())))
    pseudonym = PSEUDO.patient_pseudonym("", "MRN-4711-0815")
    assert out.PatientID == pseudonym and str(out.PatientName) == pseudonym
    assert out.Manufacturer == "ACME Medical"
    assert out.BodyPartExamined == "CHEST"
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Thorax"
    assert (out.PatientSex, out.PatientAge, out.PatientWeight) == ("F", "057Y", 71.5)
    assert (out.DeviceSerialNumber, out.StationName) == ("SN-0042", "CT-ROOM-3")
    assert out.StudyTime == "101500"  # times of day stay under Modified Dates
    assert out.PatientBirthDate == "" and out.AccessionNumber == "" and out.StudyID == ""
    assert out.InstitutionName == "" and out.ReferringPhysicianName == ""
    for keyword in (
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "PatientAddress",
        "PerformingPhysicianName",
        "IssuerOfPatientID",
        "PatientBirthTime",
    ):
        assert keyword not in out, keyword
    # Clean Descriptors: only clinical words stay (an allow-list), the description stays
    assert out.StudyDescription == "CT THORAX"
    assert out.SeriesDescription == "AX LUNG 1.25 mm"
    assert "ImageComments" not in out  # narrative: removed unless the campaign keeps it
    assert out.ProtocolName == "THORAX Routine"
    request = out.RequestAttributesSequence[0]
    assert request.ScheduledProcedureStepDescription == "Thorax"
    assert "RequestedProcedureID" not in request and "ScheduledProcedureStepID" not in request
    code = request.RequestedProcedureCodeSequence[0]
    assert code.CodeValue == "T-D3000" and code.PersonName == "ANONYMIZED"  # D in E.1-1
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_basic_profile_without_options() -> None:
    basic = DeidOptions(False, False, False, False)
    out = read(write(deid(make_ct(), basic)))
    assert out.StudyDate == "" and "SeriesDate" not in out and "StudyDescription" not in out
    assert out.ContentDate == "19000101"  # Z/D, Type 1 in enhanced IODs -> dummy
    assert out.DeviceSerialNumber == "ANONYMIZED"  # X/Z/D, Type 1 in enhanced IODs
    assert out.StationName == "" and out.PatientSex == ""
    assert "PatientAge" not in out and "InstanceCreationDate" not in out
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100"]


def test_uids_replaced_consistently_across_instances() -> None:
    study, series = UID_ROOT + "100.1", UID_ROOT + "100.2"
    first = make_ct(study_uid=study, series_uid=series, sop_uid=UID_ROOT + "100.3")
    second = make_ct(
        study_uid=study, series_uid=series, sop_uid=UID_ROOT + "100.4",
        referenced_sop_uid=UID_ROOT + "100.3",
    )  # fmt: skip
    a, b = (read(write(deid(read(write(ds))))) for ds in (first, second))
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage  # registered
    assert a.StudyInstanceUID == b.StudyInstanceUID == PSEUDO.uid(study)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    for out in (a, b):
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SOPClassUID == CTImageStorage
        for uid in _uids(out):
            assert UID(uid).is_valid, uid
            assert uid.startswith("2.25.") or uid in UID_dictionary, uid


def test_date_intervals_survive_between_studies_of_a_patient() -> None:
    first = deid(make_ct(study_date="20240301"))
    second = deid(make_ct(study_date="20240415"))
    other = deid(make_ct(patient_id="MRN-0000-0001", study_date="20240301"))
    d1, d2 = (date.fromisoformat(_iso(ds.StudyDate)) for ds in (first, second))
    assert (d2 - d1).days == 45
    assert first.StudyDate != "20240301"
    offset = PSEUDO.date_offset_days("", "MRN-4711-0815")
    assert (d1 - date(2024, 3, 1)).days == offset
    assert first.AcquisitionDateTime == first.StudyDate + "101530.123456"
    assert first.InstanceCreationDate == first.StudyDate  # outside the table: shifted too
    assert other.StudyDate != first.StudyDate


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


@pytest.mark.parametrize(("bits", "signed"), [(12, False), (12, True), (16, False), (16, True)])
def test_pixel_data_is_bit_exact(bits: int, signed: bool) -> None:
    ds = make_ct(bits_stored=bits, signed=signed, seed=bits)
    before = ds.PixelData
    out = read(write(deid(ds)))
    assert out.PixelData == before


def test_overlay_and_curve_groups_removed() -> None:
    out = read(write(deid(make_ct())))
    groups = {elem.tag.group for elem in out}
    assert not {g for g in groups if 0x6000 <= g <= 0x60FF or 0x5000 <= g <= 0x50FF}


def test_overlay_bits_above_high_bit_cleared_unsigned() -> None:
    ds = make_ct(bits_stored=12, seed=3)
    clean = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    dirty = clean.copy()
    dirty[::7] |= 0x2000  # an overlay plane in bit 13
    ds.PixelData = dirty.tobytes()
    out = read(write(deid(read(write(ds)))))
    assert np.array_equal(np.frombuffer(out.PixelData, dtype="<u2"), clean)


def test_overlay_bits_above_high_bit_cleared_signed() -> None:
    ds = make_ct(bits_stored=12, signed=True, seed=4)
    extended = np.frombuffer(ds.PixelData, dtype="<i2").copy()
    raw = (extended.view("<u2") & 0x0FFF) | 0x4000  # not sign-extended, plus an overlay bit
    ds.PixelData = raw.astype("<u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # no VR in the file
    out = read(write(deid(read(write(ds)))))
    assert np.array_equal(np.frombuffer(out.PixelData, dtype="<i2"), extended)


def test_compressed_pixels_with_overlay_bits_are_refused() -> None:
    ds = make_ct(bits_stored=16, seed=5)
    values = np.frombuffer(ds.PixelData, dtype="<u2") & 0x0FFF
    values[::5] |= 0x8000
    ds.PixelData = values.astype("<u2").tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.BitsStored, ds.HighBit = 12, 11
    with pytest.raises(CannotDeidentify, match="overlay bits"):
        deid(ds)


def test_compressed_pixels_without_overlay_bits_pass_unchanged() -> None:
    ds = make_ct(bits_stored=16, seed=6)
    values = np.frombuffer(ds.PixelData, dtype="<u2") & 0x0FFF
    ds.PixelData = values.astype("<u2").tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.BitsStored, ds.HighBit = 12, 11
    before = ds.PixelData
    assert read(write(deid(ds))).PixelData == before


def test_burned_in_annotation_yes_is_refused() -> None:
    ds = make_ct()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotation, match="BurnedInAnnotation is YES"):
        deid(ds)


@pytest.mark.parametrize("modality", ["US", "SC", "OT", "XC", "ES", "GM", "SM", "OP"])
def test_modalities_without_clean_pixel_rule_are_refused(modality: str) -> None:
    ds = make_ct()
    ds.Modality = modality
    with pytest.raises(BurnedInAnnotation, match=f"modality {modality}"):
        deid(ds)


@pytest.mark.parametrize(
    "sop_class", [SecondaryCaptureImageStorage, UID("1.2.840.10008.5.1.4.1.1.7.4")]
)
def test_secondary_capture_is_refused(sop_class: UID) -> None:
    ds = make_ct()
    ds.SOPClassUID = sop_class
    with pytest.raises(BurnedInAnnotation, match="Secondary Capture"):
        deid(ds)


def test_ultrasound_sop_class_is_refused() -> None:
    ds = make_ct()
    ds.SOPClassUID, ds.Modality = UltrasoundImageStorage, "US"
    with pytest.raises(BurnedInAnnotation, match="US"):
        deid(ds)


def test_sr_without_pixel_data_is_unsupported() -> None:
    ds = make_ct()
    ds.SOPClassUID, ds.Modality = BasicTextSRStorage, "SR"
    del ds.PixelData
    with pytest.raises(UnsupportedObject, match="Basic Text SR"):
        deid(ds)


def test_image_class_without_pixel_data_is_unsupported() -> None:
    ds = make_ct()
    del ds.PixelData
    with pytest.raises(UnsupportedObject, match="no pixel data"):
        deid(ds)


@pytest.mark.parametrize("patient_id", ["", "   "])
def test_missing_patient_id_cannot_be_deidentified(patient_id: str) -> None:
    ds = make_ct()
    ds.PatientID = patient_id
    with pytest.raises(CannotDeidentify, match="PatientID"):
        deid(ds)
    del ds.PatientID
    with pytest.raises(CannotDeidentify):
        deid(ds)


def test_refusal_messages_hold_no_identifying_values() -> None:
    ds = make_ct()
    ds.Modality = "US"
    with pytest.raises(BurnedInAnnotation) as info:
        deid(ds)
    assert not any(text in str(info.value) for text in PHI_STRINGS)


def test_same_bytes_give_identical_output() -> None:
    data = write(make_ct())
    first = write(Deidentifier(DeidOptions(), Pseudonymizer(KEY)).deidentify(read(data)))
    second = write(Deidentifier(DeidOptions(), Pseudonymizer(KEY)).deidentify(read(data)))
    assert first == second
    other_key = write(Deidentifier(DeidOptions(), Pseudonymizer(KEY[::-1])).deidentify(read(data)))
    assert other_key != first


CAMPAIGN_CODES = {"113100", "113105", "113107", "113108", "113109"}


@pytest.mark.parametrize(
    ("options", "codes"),
    [
        (DeidOptions(), CAMPAIGN_CODES),
        (DeidOptions(False, False, False, False), {"113100"}),
        (
            DeidOptions(clean_descriptors=False, retain_device_identity=False),
            {"113100", "113107", "113108"},
        ),
        (DeidOptions(safe_private_tags=frozenset({PRIVATE_SAFE})), CAMPAIGN_CODES | {"113111"}),
    ],
)
def test_method_code_sequence_lists_exactly_the_enabled_options(
    options: DeidOptions, codes: set[str]
) -> None:
    out = read(write(deid(make_ct(), options)))
    items = out.DeidentificationMethodCodeSequence
    assert {item.CodeValue for item in items} == codes
    assert len(items) == len(codes)
    assert all(item.CodingSchemeDesignator == "DCM" for item in items)
    assert "113103" not in codes  # Clean Graphics is not claimed
    method = " ".join(out.DeidentificationMethod)
    assert "Basic Application Confidentiality Profile" in method and "Table E.1-1" in method


def test_safe_private_tag_kept_others_removed() -> None:
    options = DeidOptions(safe_private_tags=frozenset({PRIVATE_SAFE}))
    out = read(write(deid(make_ct(), options)))
    private = {elem.tag: elem.value for elem in out if elem.tag.is_private}
    assert private == {0x00090010: "ACME PRIVATE", 0x00091002: 2.5}
    plain = read(write(deid(make_ct())))
    assert not [elem for elem in plain if elem.tag.is_private]


def test_attributes_outside_the_table_follow_the_keep_list() -> None:
    ds = make_ct()
    ds.SecondaryCaptureDeviceManufacturerModelName = "Free text Musterfrau"  # LO, not safe
    ds.SliceThickness = "1.25"  # DS: kept
    ds.CodingSchemeUID = UID_ROOT + "55"  # unregistered UID: replaced
    ds.add_new(0x00089999, "UN", b"unknown")  # unknown, UN: removed
    ds.add_new(0x00080000, "UL", 4)  # group length: removed
    out = deid(ds)
    assert "SecondaryCaptureDeviceManufacturerModelName" not in out
    assert out.SliceThickness == 1.25
    assert out.CodingSchemeUID == PSEUDO.uid(UID_ROOT + "55")
    assert 0x00089999 not in out and 0x00080000 not in out


def test_file_meta_names_medai_not_the_sender() -> None:
    out = deid(make_ct())
    meta = out.file_meta
    assert "SourceApplicationEntityTitle" not in meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert str(meta.ImplementationVersionName).startswith("MEDAI")
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


IMAGES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "693_J2KI.dcm",
    "examples_overlay.dcm",
]
NON_IMAGES = ["rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "reportsi.dcm", "test-SR.dcm",
              "waveform_ecg.dcm", "liver_1frame.dcm"]  # fmt: skip
BURNED_IN = ["examples_palette.dcm", "examples_rgb_color.dcm", "JPEG2000.dcm", "image_dfl.dcm"]


def bundled(name: str) -> Dataset:
    """One of pydicom's bundled test files, fully read."""
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), f"pydicom test file {name} is not installed"
    return dcmread(path, force=True)


@pytest.mark.parametrize("name", IMAGES)
def test_pydicom_images_are_deidentified(name: str) -> None:
    original = bundled(name)
    names = {str(original.PatientName), *str(original.PatientName).split("^")} - {""}
    patient_id = str(original.PatientID)
    before = original.PixelData
    out = read(write(deid(bundled(name))))
    data = write(out)
    for value in names | {patient_id}:
        if len(value) >= 3:
            assert value.encode() not in data, value
    assert out.PatientID == PSEUDO.patient_pseudonym("", patient_id)
    assert out.SOPInstanceUID.startswith("2.25.") and UID(out.SOPInstanceUID).is_valid
    assert out.StudyInstanceUID == PSEUDO.uid(original.StudyInstanceUID)
    assert not [elem for elem in out if elem.tag.is_private]
    assert out.PixelData == before


@pytest.mark.parametrize("name", NON_IMAGES)
def test_pydicom_non_images_are_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedObject):
        deid(bundled(name))


@pytest.mark.parametrize("name", BURNED_IN)
def test_pydicom_burned_in_candidates_are_refused(name: str) -> None:
    with pytest.raises(BurnedInAnnotation):
        deid(bundled(name))


# --- the descriptor cleaner ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # an allow-list (see tests/collection/test_descriptor_cleaning.py): only clinical
        # words, numbers beside them and punctuation between them stay
        ("Follow-up 2024-03-01 and 01.03.2024 and 20240301", "Follow-up and and"),
        ("CT seen on 1 March 2024, also 1. März 2024", "CT on"),
        ("call +49 (30) 123-4567 or 030/1234567", "or"),
        ("mail erika.musterfrau@example.org now", ""),
        ("CT ID 123456 but 1234 goes", "CT"),
        ("slices 0.625 1.25 mm", "slices 0.625 1.25 mm"),
        ("Patient MUSTERFRAU, erika", ""),
        ("Dr. Hausarzt   referred\n\tby  St. Elsewhere Klinikum", "by"),
        ("Musterfraudulent is not a name", "not"),
    ],
)
def test_descriptor_cleaner(text: str, expected: str) -> None:
    found = frozenset(
        {
            ("PN", "Musterfrau^Erika"),
            ("PN", "Hausarzt^Hans"),
            ("LO", "St. Elsewhere Klinikum"),
            ("DA", "20240301"),
        }
    )
    cleaner = cleaner_for(found, load_vocabulary())
    assert isinstance(cleaner, DescriptorCleaner)
    assert cleaner.clean(text) == expected


def test_nested_sequences_are_walked() -> None:
    ds = make_ct()
    inner = Dataset()
    inner.PatientName = "Nested^Person"  # Z inside a sequence: not the top-level pseudonym
    inner.ReferencedSOPInstanceUID = UID_ROOT + "9.9"
    outer = Dataset()
    outer.ReferencedSeriesSequence = Sequence([inner])  # not in the table: walked
    ds.ReferencedSeriesSequence = Sequence([outer])
    out = deid(ds)
    walked = out.ReferencedSeriesSequence[0].ReferencedSeriesSequence[0]
    assert walked.PatientName == ""
    assert walked.ReferencedSOPInstanceUID == PSEUDO.uid(UID_ROOT + "9.9")


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [
        ("20240301", "DA", "20240131"),
        ("2024.03.01", "DA", "20240131"),
        ("20240301101530.123456+0100", "DT", "20240131101530.123456+0100"),
        ("20240301", "DT", "20240131"),
        ("2024", "DT", None),
        ("20240231", "DA", None),
        ("20240301x", "DA", None),
        ("", "DA", None),
    ],
)
def test_shift_date(value: str, vr: str, expected: str | None) -> None:
    assert shift_date(value, -30, vr) == expected


def test_unparseable_dates_are_emptied() -> None:
    ds = make_ct()
    # not a full date: it cannot be shifted, so it must not stay
    ds[0x00080021] = DataElement(0x00080021, "DA", "2024", validation_mode=config.IGNORE)
    assert deid(ds).SeriesDate == ""
