"""Small DICOM datasets with planted PHI, for the de-identification and pseudonymization tests."""

from __future__ import annotations

import io

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "PHI_STRINGS",
    "PRIVATE_SAFE",
    "make_ct",
    "read",
    "write",
]

UID_ROOT = "1.2.826.0.1.3680043.8.498."
PRIVATE_SAFE = ("ACME PRIVATE", 0x02)
"""(creator, element) of the one private element the tests declare safe."""

# Every identifying string planted by make_ct(); none may survive de-identification.
PHI_STRINGS = frozenset(
    {
        "Musterfrau",
        "Erika",
        "MRN-4711-0815",
        "ALT-99887766",
        "SEQ-ID-556677",
        "19660412",
        "071532",
        "Hauptstrasse",
        "1234567",
        "ACC20240301X9",
        "Elsewhere Klinikum",
        "Klinikweg",
        "Hausarzt",
        "Radiologe",
        "Technik",
        "Befunder",
        "Aktenarzt",
        "STUDY-778899",
        "REQ-445566",
        "SPS-112233",
        "erika.musterfrau@example.org",
        "Secret Private",
        "Other Vendor PHI",
        "20240301",
        "01.03.2024",
        "Issuer Hospital",
        "Nested^Person",
        "Nested",
    }
)


def make_ct(
    *,
    patient_id: str = "MRN-4711-0815",
    study_date: str = "20240301",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    referenced_sop_uid: str | None = None,
    size: int = 32,
    bits_stored: int = 12,
    signed: bool = False,
    seed: int = 0,
) -> Dataset:
    """A CT-like instance with PHI planted wherever real files carry it.

    Parameters
    ----------
    patient_id, study_date
        The patient's ID and the study's date (all dates of the instance use it).
    study_uid, series_uid, sop_uid
        UIDs; new random ones under a test root when omitted.
    referenced_sop_uid
        SOPInstanceUID placed in ReferencedImageSequence (another instance of the study).
    size
        Rows and columns of the 16-bit image.
    bits_stored, signed
        Pixel encoding; samples are random within the stored range.
    seed
        Seed of the pixel values.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.SourceApplicationEntityTitle = "KLINIKUM_PACS"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid(UID_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid(UID_ROOT)
    ds.SeriesInstanceUID = series_uid or generate_uid(UID_ROOT)
    ds.FrameOfReferenceUID = generate_uid(UID_ROOT)
    ds.InstanceCreationDate = study_date
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.AcquisitionDateTime = f"{study_date}101530.123456"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101510"
    ds.AccessionNumber = "ACC20240301X9"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.ManufacturerModelName = "Scanner 3000"
    ds.DeviceSerialNumber = "SN-0042"
    ds.StationName = "CT-ROOM-3"
    ds.InstitutionName = "St. Elsewhere Klinikum"
    ds.InstitutionAddress = "Klinikweg 5, Musterstadt"
    ds.ReferringPhysicianName = "Hausarzt^Hans"
    ds.PerformingPhysicianName = "Radiologe^Rita"
    ds.OperatorsName = "Technik^Toni"
    ds.NameOfPhysiciansReadingStudy = "Befunder^Bernd"
    ds.PhysiciansOfRecord = "Aktenarzt^Anna"
    ds.StudyDescription = "CT THORAX Erika Musterfrau MRN-4711-0815 01.03.2024 030 1234567"
    ds.SeriesDescription = "AX LUNG 1.25 mm erika.musterfrau@example.org"
    ds.ProtocolName = "THORAX Routine"
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = "Musterfrau^Erika^Maria"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "Issuer Hospital"
    ds.OtherPatientIDs = "ALT-99887766"
    other = Dataset()
    other.PatientID = "SEQ-ID-556677"
    other.IssuerOfPatientID = "Issuer Hospital"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientBirthDate = "19660412"
    ds.PatientBirthTime = "071532"
    ds.PatientSex = "F"
    ds.PatientAge = "057Y"
    ds.PatientWeight = "71.5"
    ds.PatientAddress = "Hauptstrasse 12, 10115 Berlin"
    ds.PatientTelephoneNumbers = "+49 30 1234567"
    ds.StudyID = "STUDY-778899"
    ds.ImageComments = "Pat. Musterfrau, geb. 12.04.1966"
    request = Dataset()
    request.RequestedProcedureID = "REQ-445566"
    request.ScheduledProcedureStepID = "SPS-112233"
    request.ScheduledProcedureStepDescription = "Thorax Musterfrau"
    nested = Dataset()
    nested.CodeValue = "T-D3000"
    nested.CodingSchemeDesignator = "SRT"
    nested.CodeMeaning = "Chest"
    nested.PersonName = "Nested^Person"
    request.RequestedProcedureCodeSequence = Sequence([nested])
    ds.RequestAttributesSequence = Sequence([request])
    anatomy = Dataset()
    anatomy.CodeValue = "51185008"
    anatomy.CodingSchemeDesignator = "SCT"
    anatomy.CodeMeaning = "Thorax"
    ds.AnatomicRegionSequence = Sequence([anatomy])
    if referenced_sop_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = referenced_sop_uid
        ds.ReferencedImageSequence = Sequence([ref])
    # Private elements: one declared safe by the tests, the others carry PHI.
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x00091001, "LO", "Secret Private Musterfrau")
    ds.add_new(0x00091002, "DS", "2.5")
    ds.add_new(0x00110010, "LO", "OTHER VENDOR")
    ds.add_new(0x00111001, "LO", "Other Vendor PHI")
    # An overlay plane and a curve, both to be removed with their groups.
    ds.add_new(0x60000010, "US", size)
    ds.add_new(0x60000011, "US", size)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", b"\xff" * (size * size // 8))
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50003000, "OW", b"\x01\x02")

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = "-1024" if not signed else "0"
    ds.RescaleSlope = "1"
    rng = np.random.default_rng(seed)
    if signed:
        low, high = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1))
        pixels = rng.integers(low, high, size=(size, size), dtype=np.int16)
    else:
        pixels = rng.integers(0, 1 << bits_stored, size=(size, size), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def write(ds: Dataset) -> bytes:
    """``ds`` as DICOM file bytes (preamble, file meta)."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read(data: bytes) -> Dataset:
    """Parse DICOM file bytes, fully."""
    return dcmread(io.BytesIO(data))
