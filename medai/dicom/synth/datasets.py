"""Build the DICOM datasets of synthetic studies, with PHI planted where real files hold it."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import UID, RLELossless

from medai.dicom.synth.ct_volume import CtLatent
from medai.dicom.synth.images import (
    CHEST_MAX,
    ct_slice_hu,
    draw_chest,
    marker_overlay,
    render_chest,
)
from medai.dicom.synth.latent import ChestLatent
from medai.dicom.synth.phi import FakePatient, PhiRecord, Staff
from medai.dicom.synth.profiles import SiteProfile

__all__ = [
    "CR_IMAGE_STORAGE",
    "CT_IMAGE_STORAGE",
    "DX_IMAGE_STORAGE",
    "StudyPlan",
    "chest_instance",
    "ct_instance",
    "derived_uid",
    "usable_transfer_syntax",
]

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray, For Presentation
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
PRIVATE_CREATOR = "ACME HOSPITAL"


def derived_uid(*parts: object) -> UID:
    """A UID under the ``2.25`` root, derived from ``parts`` (no clock, no randomness)."""
    digest = hashlib.sha256("|".join(str(part) for part in parts).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


@dataclass(frozen=True)
class StudyPlan:
    """Everything decided about one study before its files are written."""

    uid_root: str  # seed and site: the root every UID of the study derives from
    site: str
    profile: SiteProfile
    institution: tuple[str, str, str]
    staff: Staff
    patient: FakePatient
    local_patient_id: str
    study_date: datetime.date
    study_time: datetime.time
    accession_number: str
    study_id: str
    modality: str
    transfer_syntax: UID
    view_position: str
    nodule: bool
    effusion: bool
    cardiomegaly: bool
    image_seed: int
    overlay: bool
    latent: ChestLatent | None = None  # a chest film's truth (see synth.latent)
    ct_latent: CtLatent | None = None  # a CT series' nodule (see synth.ct_volume)

    @property
    def study_instance_uid(self) -> UID:
        return derived_uid(self.uid_root, self.accession_number, "study")

    def series_instance_uid(self, series_number: int) -> UID:
        return derived_uid(self.uid_root, self.accession_number, "series", series_number)

    def sop_instance_uid(self, series_number: int, instance_number: int) -> UID:
        return derived_uid(
            self.uid_root, self.accession_number, "instance", series_number, instance_number
        )


def usable_transfer_syntax(uid: UID) -> UID:
    """``uid``, or RLE Lossless where no encoder for ``uid`` is installed."""
    if uid.is_compressed and uid != RLELossless and not get_encoder(uid).is_available:
        return RLELossless
    return uid


def _age(birth: datetime.date, on: datetime.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _common(
    plan: StudyPlan,
    phi: PhiRecord,
    *,
    sop_class: UID,
    series_number: int,
    instance_number: int,
    manufacturer: str,
    model: str,
    body_part: str,
    when: datetime.datetime,
) -> Dataset:
    """Patient, study, series, equipment and request modules, with the PHI they carry."""
    patient, staff = plan.patient, plan.staff
    institution, institution_address, code = plan.institution
    series_uid = plan.series_instance_uid(series_number)
    sop_uid = plan.sop_instance_uid(series_number, instance_number)
    study_dt = datetime.datetime.combine(plan.study_date, plan.study_time)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = plan.transfer_syntax
    meta.ImplementationClassUID = derived_uid("implementation", manufacturer)
    meta.ImplementationVersionName = f"{(manufacturer or 'SYNTH').split()[0][:10].upper()}_V1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"][: 3 if plan.modality == "CT" else 2]
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = plan.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = study_dt.strftime("%H%M%S")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    ds.AccessionNumber = plan.accession_number
    ds.Modality = plan.modality
    if plan.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = manufacturer
    ds.InstitutionName = institution
    ds.InstitutionAddress = institution_address
    ds.ReferringPhysicianName = staff.referring
    ds.ReferringPhysicianTelephoneNumbers = staff.referring_phone
    station = f"{code}-{plan.modality}-RAD{1 + len(model) % 3}"
    ds.StationName = station
    view = plan.view_position if plan.modality != "CT" else "AXIAL"
    ds.StudyDescription = (
        f"XR CHEST {view} - {patient.display_name} {patient.patient_id}"
        if (plan.modality != "CT")
        else f"CT THORAX - {patient.display_name} {patient.patient_id}"
    )
    ds.SeriesDescription = f"{view} {patient.last_name.upper()} {patient.patient_id}"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName = staff.performing
    ds.NameOfPhysiciansReadingStudy = staff.reading
    ds.OperatorsName = staff.operator
    ds.ManufacturerModelName = model

    ds.PatientName = patient.dicom_name
    ds.PatientID = patient.patient_id
    # The city-wide ID a cross-site patient has at every site: one issuer (the site's own
    # number, in OtherPatientIDsSequence, is issued by the site).
    ds.IssuerOfPatientID = "CITY-MPI"
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.OtherPatientIDs = plan.local_patient_id
    other = Dataset()
    other.PatientID = plan.local_patient_id
    other.IssuerOfPatientID = f"{code}-HIS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientAge = _age(patient.birth_date, plan.study_date)
    ds.PatientSize = f"{patient.height_m:.2f}"
    ds.PatientWeight = str(patient.weight_kg)
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.telephone
    ds.BurnedInAnnotation = "NO"
    # Vendors write lower case into this CS element; pydicom would warn on the value.
    ds.add(DataElement(0x00180015, "CS", body_part, validation_mode=config.IGNORE))
    serial = f"{code}{plan.modality}{int(derived_uid(model, code).split('.')[-1]) % 10**6:06d}"
    ds.DeviceSerialNumber = serial
    ds.SoftwareVersions = "VA10B"
    ds.StudyInstanceUID = plan.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = plan.study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageComments = f"Patient {patient.first_name} {patient.last_name}, MRN {patient.patient_id}"
    ds.RequestingPhysician = staff.referring
    ds.PerformedProcedureStepStartDate = plan.study_date.strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = study_dt.strftime("%H%M%S")
    ds.PerformedProcedureStepID = f"PPS{plan.accession_number[-7:]}"
    request = Dataset()
    request.AccessionNumber = plan.accession_number
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = f"{institution} RIS"
    request.IssuerOfAccessionNumberSequence = Sequence([issuer])
    request.RequestedProcedureID = f"RP{plan.accession_number[-8:]}"
    request.ScheduledProcedureStepID = f"SPS{plan.accession_number[-8:]}"
    request.RequestedProcedureDescription = "CT THORAX" if plan.modality == "CT" else "XR CHEST"
    request.ReasonForTheRequestedProcedure = (
        f"Cough, fever. {patient.last_name} {patient.patient_id}"
    )
    ds.RequestAttributesSequence = Sequence([request])

    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", patient.display_name.upper())
    block.add_new(0x02, "LO", plan.local_patient_id)
    block.add_new(0x03, "LO", patient.telephone)

    phi.add_person("PatientName", patient.dicom_name)
    phi.add("PatientID", patient.patient_id)
    phi.add("OtherPatientIDs", plan.local_patient_id)
    phi.add("OtherPatientIDsSequence/PatientID", plan.local_patient_id)
    phi.add("AccessionNumber", plan.accession_number)
    phi.add("InstitutionName", institution)
    phi.add("InstitutionAddress", institution_address)
    phi.add_person("ReferringPhysicianName", staff.referring)
    phi.add("ReferringPhysicianTelephoneNumbers", staff.referring_phone)
    phi.add_person("PerformingPhysicianName", staff.performing)
    phi.add_person("NameOfPhysiciansReadingStudy", staff.reading)
    phi.add_person("OperatorsName", staff.operator)
    phi.add_person("RequestingPhysician", staff.referring)
    phi.add("StudyDescription", patient.display_name, patient.patient_id)
    phi.add("SeriesDescription", patient.last_name.upper(), patient.patient_id)
    phi.add("ImageComments", patient.first_name, patient.last_name, patient.patient_id)
    phi.add("PatientAddress", patient.address)
    phi.add("PatientTelephoneNumbers", patient.telephone)
    phi.add("PerformedProcedureStepID", ds.PerformedProcedureStepID)
    phi.add("RequestAttributesSequence/AccessionNumber", plan.accession_number)
    phi.add(
        "RequestAttributesSequence/IssuerOfAccessionNumberSequence/LocalNamespaceEntityID",
        issuer.LocalNamespaceEntityID,
    )
    phi.add("RequestAttributesSequence/RequestedProcedureID", request.RequestedProcedureID)
    phi.add("RequestAttributesSequence/ScheduledProcedureStepID", request.ScheduledProcedureStepID)
    phi.add(
        "RequestAttributesSequence/ReasonForTheRequestedProcedure",
        patient.last_name,
        patient.patient_id,
    )
    phi.add(
        f"private {PRIVATE_CREATOR}",
        patient.display_name.upper(),
        plan.local_patient_id,
        patient.telephone,
    )
    phi.device.update({station, serial})
    phi.uids.update({str(plan.study_instance_uid), str(series_uid), str(sop_uid)})
    return ds


def _plugin(ts: UID) -> str:
    # Pinned, in a fixed order: two encoders of one syntax may write different bytes.
    available = get_encoder(ts).available_plugins
    for name in ("pylibjpeg", "pydicom", "gdcm", "pyjpegls"):
        if name in available:
            return name
    return ""


def _set_pixels(ds: Dataset, pixels: NDArray[np.uint16] | NDArray[np.int16], ts: UID) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.HighBit = ds.BitsStored - 1
    if ts.is_compressed:
        ds.PixelData = b""  # compress() replaces it; the element must exist for its checks
        ds.compress(ts, pixels, encoding_plugin=_plugin(ts), generate_instance_uid=False)
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ts


def chest_instance(plan: StudyPlan, phi: PhiRecord, size: int) -> Dataset:
    """The one frontal chest radiograph (CR or DX) of ``plan``, with its findings drawn."""
    profile = plan.profile
    sop_class = CR_IMAGE_STORAGE if plan.modality == "CR" else DX_IMAGE_STORAGE
    when = datetime.datetime.combine(plan.study_date, plan.study_time) + datetime.timedelta(
        minutes=4
    )
    ds = _common(
        plan,
        phi,
        sop_class=sop_class,
        series_number=1,
        instance_number=1,
        manufacturer=profile.chest_manufacturer,
        model=profile.chest_model,
        body_part=profile.body_part,
        when=when,
    )
    ds.ViewPosition = plan.view_position
    ds.PatientOrientation = ["L", "F"]
    ds.KVP = "125"
    ds.ExposureTime = 8
    spacing = f"{430.0 / size:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    if plan.modality == "DX":
        # DX Anatomy Imaged, DX Positioning and Acquisition Context: Type 1 and 2 in the IOD.
        ds.ImageLaterality = "U"
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator = "51185008", "SCT"
        region.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = Sequence([region])
        ds.PositionerType = "NONE"
        ds.AcquisitionContextSequence = Sequence()
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.PresentationLUTShape = "IDENTITY"
    else:
        ds.PixelSpacing = [spacing, spacing]
    ds.WindowCenter, ds.WindowWidth = str(CHEST_MAX // 2), str(CHEST_MAX)
    ds.LossyImageCompression = "00"
    ds.BitsStored = profile.chest_bits_stored
    ds.PixelRepresentation = 0
    if plan.overlay:
        plane = marker_overlay(size, size)
        ds.add_new(0x60000010, "US", size)
        ds.add_new(0x60000011, "US", size)
        ds.add_new(0x60000022, "LO", "SIDE MARKER")
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60000102, "US", 0)
        ds.add_new(0x60003000, "OW", pack_bits(plane))
    if plan.latent is not None:
        pixels = draw_chest(
            size, plan.latent, seed=plan.image_seed, acquisition=profile.acquisition
        )
    else:
        pixels = render_chest(
            size,
            seed=plan.image_seed,
            nodule=plan.nodule,
            effusion=plan.effusion,
            cardiomegaly=plan.cardiomegaly,
        )
    _set_pixels(ds, pixels, plan.transfer_syntax)
    return ds


def ct_instance(
    plan: StudyPlan,
    phi: PhiRecord,
    *,
    size: int,
    columns: int | None = None,
    index: int,
    slices: int,
    hu: NDArray[np.int16] | None = None,
) -> Dataset:
    """Slice ``index`` (0-based) of the ``slices``-slice axial CT series of ``plan``.

    ``hu`` is the slice's pixels in HU (from :func:`~medai.dicom.synth.ct_volume.render_ct_volume`);
    without it the slice is drawn alone, with no lesion.
    """
    profile = plan.profile
    columns = columns or size
    when = datetime.datetime.combine(plan.study_date, plan.study_time) + datetime.timedelta(
        minutes=6, seconds=index
    )
    ds = _common(
        plan,
        phi,
        sop_class=CT_IMAGE_STORAGE,
        series_number=2,
        instance_number=index + 1,
        manufacturer=profile.ct_manufacturer or "",
        model=profile.ct_model,
        body_part=profile.ct_body_part,
        when=when,
    )
    thickness = 300.0 / max(slices, 1)
    z = -index * thickness
    spacing = f"{400.0 / max(size, columns):.4f}"
    ds.KVP = "120"
    ds.SliceThickness = f"{thickness:.2f}"
    ds.ConvolutionKernel = "LUNG"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = derived_uid(plan.uid_root, plan.accession_number, "frame")
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = ["-200", "-200", f"{z:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.2f}"
    ds.PixelSpacing = [spacing, spacing]
    ds.RescaleIntercept = str(profile.ct_rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    # A lung reconstruction: the lung window first (what a reader, and the pixels' default
    # display, use for nodules), the mediastinal window second.
    ds.WindowCenter, ds.WindowWidth = ["-600", "40"], ["1500", "400"]
    ds.BitsStored = profile.ct_bits_stored
    ds.PixelRepresentation = 1
    phi.uids.add(str(ds.FrameOfReferenceUID))
    if hu is None:
        hu = ct_slice_hu(size, columns, seed=plan.image_seed, z=index / max(slices - 1, 1))
    low, high = -(2 ** (profile.ct_bits_stored - 1)), 2 ** (profile.ct_bits_stored - 1) - 1
    stored = np.clip(hu.astype(np.int32) - profile.ct_rescale_intercept, low, high)
    _set_pixels(ds, stored.astype(np.int16), plan.transfer_syntax)
    return ds
