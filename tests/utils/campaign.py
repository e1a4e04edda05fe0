"""Factories for tests that need a set-up campaign and synthetic inputs."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom

from medai.collection.campaign.definition import load_campaign
from medai.collection.campaign.setup import init_campaign
from medai.config import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CAMPAIGN = REPO / "collection" / "example-campaign.toml"
SITES = ("site-a", "site-b", "site-c")


def init_example_campaign(settings: Settings) -> None:
    """Set up the example campaign (catalog, sites, key) in ``settings``' home."""
    init_campaign(load_campaign(EXAMPLE_CAMPAIGN), settings)


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def bad_inputs(first_valid: bytes) -> dict[str, bytes]:
    """One input per way a file can be bad, keyed by the reason code expected for it.

    ``first_valid`` is the bytes of a good instance the broken ones derive from.
    """
    ds = pydicom.dcmread(io.BytesIO(first_valid))
    missing_uid = copy.deepcopy(ds)
    del missing_uid.SOPInstanceUID
    # MPEG-2 video: a transfer syntax pydicom knows but no installed plugin decodes.
    undecodable = copy.deepcopy(ds)
    undecodable.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["undecodable"])
    undecodable.PixelData = pydicom.encaps.encapsulate([b"\xff\x0a" + bytes(range(256)) * 4])
    undecodable["PixelData"].VR = "OB"
    undecodable.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    no_patient_id = copy.deepcopy(ds)
    no_patient_id.PatientID = ""
    no_patient_id.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["no-patient-id"])
    burned_in = copy.deepcopy(ds)
    burned_in.BurnedInAnnotation = "YES"
    burned_in.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["burned-in"])
    report = copy.deepcopy(ds)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        if keyword in report:
            delattr(report, keyword)
    report.SOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.Modality = "SR"
    report.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["report"])
    return {
        "cannot-deidentify": dataset_bytes(no_patient_id),
        "burned-in-annotation": dataset_bytes(burned_in),
        "unsupported-object": dataset_bytes(report),
        "not-dicom": b"this is a radiology report, not an image\n" * 20,
        "truncated": first_valid[: len(first_valid) // 2],
        "missing-attribute": dataset_bytes(missing_uid),
        "undecodable-transfer-syntax": dataset_bytes(undecodable),
    }
