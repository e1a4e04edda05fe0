"""Small, standard-valid instances of the IODs medai stores: MR, enhanced MR, DX and CR.

Each instance passes ``dciodvfy`` (dicom3tools) without errors and carries, beside the PHI
real files hold, the attributes that de-identification must keep valid: a Frame of Reference
with its PositionReferenceIndicator, coded entries with context group versions, an issuer of
the accession number (an HL7v2 hierarchic designator), modality and VOI LUT sequences,
real-world value mappings, stacks and a pulse sequence name. The same seed always gives the
same dataset; the pixels are a smooth gradient (content is not the point here).
"""

from __future__ import annotations

import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from medai.dicom.synth.datasets import (
    CR_IMAGE_STORAGE,
    DX_IMAGE_STORAGE,
    derived_uid,
)
from medai.dicom.synth.phi import make_patient, make_staff

__all__ = [
    "ENHANCED_MR_IMAGE_STORAGE",
    "MR_IMAGE_STORAGE",
    "make_cr",
    "make_dx",
    "make_enhanced_mr",
    "make_mr",
]

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")

_STUDY_DAY = datetime.date(2023, 5, 17)
_DCMR_VERSION = "20230101000000"  # a CID's version: a date about the standard, not the patient


def _code(value: str, scheme: str, meaning: str, context: str | None = None) -> Dataset:
    """One coded entry; with ``context``, the CID (DCMR) it was chosen from and its version."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    if context is not None:
        item.ContextIdentifier = context
        item.MappingResource = "DCMR"
        item.ContextGroupVersion = _DCMR_VERSION
    return item


def _base(sop_class: UID, modality: str, seed: int) -> Dataset:
    """Patient, study, series, equipment and SOP common modules, with the PHI they carry."""
    rng = np.random.default_rng([seed, 11])
    patient = make_patient(rng, f"MRN{int(rng.integers(10**7, 10**8)):08d}")
    staff = make_staff(rng)
    root = f"medai-synth-{modality}/{seed}"
    accession = f"AC{int(rng.integers(10**7, 10**8)):08d}"
    when = datetime.datetime.combine(_STUDY_DAY, datetime.time(9, 41, 7))

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = derived_uid(root, "instance")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = derived_uid("implementation", "medai-synth")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    # Patient
    ds.PatientName = patient.dicom_name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "NORTH-HIS"
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAddress = patient.address
    # General Study, with the accession number's issuer (HL7v2 hierarchic designator)
    ds.StudyInstanceUID = derived_uid(root, "study")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "North General RIS"
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.ReferringPhysicianName = staff.referring
    ds.StudyID = f"S{accession[-6:]}"
    ds.StudyDescription = f"{modality} STUDY {patient.last_name}"
    ds.ProcedureCodeSequence = Sequence([_code("24627-2", "LN", "Chest CT")])
    # Patient Study
    ds.PatientAge = "047Y"
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = derived_uid(root, "series")
    ds.SeriesNumber = 1
    ds.OperatorsName = staff.operator
    # General Equipment
    ds.Manufacturer = "SYNTH MEDICAL"
    ds.InstitutionName = "North General Hospital"
    ds.StationName = "NORTH-RAD1"
    ds.DeviceSerialNumber = f"SN{seed:06d}"
    ds.ManufacturerModelName = "Synthesis 3000"
    ds.SoftwareVersions = "V1.0"
    # General Image
    ds.InstanceNumber = 1
    ds.ImageComments = f"Patient {patient.first_name} {patient.last_name}"
    return ds


def _pixels(ds: Dataset, rows: int, columns: int, frames: int = 1) -> None:
    """Image Pixel module: 12 of 16 bits, unsigned, a gradient per frame."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    grid = np.add.outer(np.arange(rows), np.arange(columns)).astype(np.uint16) * 16
    stack = np.stack([grid + 100 * f for f in range(frames)]).astype("<u2")
    ds.PixelData = stack.tobytes()
    ds["PixelData"].VR = "OW"


def _frame_of_reference(ds: Dataset, root: str) -> None:
    ds.FrameOfReferenceUID = derived_uid(root, "frame")
    ds.PositionReferenceIndicator = "SN"  # Type 2: the sternal notch, no one's identity


def make_mr(*, seed: int = 0, size: int = 16) -> Dataset:
    """One MR Image Storage instance (single frame), valid for ``dciodvfy``.

    Parameters
    ----------
    seed
        Seed of the fake patient and the UIDs.
    size
        Rows and columns.

    Returns
    -------
    pydicom.dataset.Dataset
        With ``file_meta`` set (Explicit VR Little Endian).
    """
    ds = _base(MR_IMAGE_STORAGE, "MR", seed)
    _frame_of_reference(ds, f"mr/{seed}")
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "8.2"
    ds.EchoTime = "3.7"
    ds.EchoTrainLength = "1"
    ds.SliceThickness = "1.0"
    ds.PixelSpacing = ["1.0", "1.0"]
    ds.ImagePositionPatient = ["-8", "-8", "0"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest", "4031")])
    voi = Dataset()
    voi.LUTDescriptor = [4, 0, 16]
    voi.LUTExplanation = "LINEAR RAMP"
    voi.add_new(0x00283006, "US", [0, 16384, 32768, 65535])  # LUTData
    ds.VOILUTSequence = Sequence([voi])
    _pixels(ds, size, size)
    return ds


def _chest_projection(ds: Dataset) -> None:
    """What a frontal chest projection radiograph shares (DX and CR)."""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"  # unpaired: the chest
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest", "4009")])
    ds.KVP = "125"
    ds.ImagerPixelSpacing = ["0.5", "0.5"]
    voi = Dataset()
    voi.LUTDescriptor = [4, 0, 16]
    voi.LUTExplanation = "NORMAL"
    voi.add_new(0x00283006, "US", [0, 16384, 32768, 65535])  # LUTData
    ds.VOILUTSequence = Sequence([voi])


def make_dx(*, seed: int = 0, size: int = 16) -> Dataset:
    """One Digital X-Ray Image Storage (For Presentation) chest PA, valid for ``dciodvfy``.

    Parameters
    ----------
    seed
        Seed of the fake patient and the UIDs.
    size
        Rows and columns.

    Returns
    -------
    pydicom.dataset.Dataset
        With ``file_meta`` set (Explicit VR Little Endian).
    """
    ds = _base(DX_IMAGE_STORAGE, "DX", seed)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior", "4010")])
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _chest_projection(ds)
    ds.DetectorType = "SCINTILLATOR"
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = Sequence()
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    _pixels(ds, size, size)
    return ds


def make_cr(*, seed: int = 0, size: int = 16) -> Dataset:
    """One Computed Radiography Image Storage chest PA, with a modality LUT sequence.

    Parameters
    ----------
    seed
        Seed of the fake patient and the UIDs.
    size
        Rows and columns.

    Returns
    -------
    pydicom.dataset.Dataset
        With ``file_meta`` set (Explicit VR Little Endian).
    """
    ds = _base(CR_IMAGE_STORAGE, "CR", seed)
    _chest_projection(ds)
    ds.PixelSpacing = ds.ImagerPixelSpacing
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    lut.ModalityLUTType = "US"  # unspecified units: a defined term, kept as is
    lut.add_new(0x00283006, "US", [0, 20000, 40000, 65535])  # LUTData
    ds.ModalityLUTSequence = Sequence([lut])
    _pixels(ds, size, size)
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _shared_mr_groups(size: int) -> Dataset:
    """The functional groups every frame of the enhanced MR series shares."""
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence(
        [_item(PixelSpacing=["1.0", "1.0"], SliceThickness="2.0")]
    )
    shared.PlaneOrientationSequence = Sequence(
        [_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])]
    )
    shared.FrameAnatomySequence = Sequence(
        [
            _item(
                FrameLaterality="U",
                AnatomicRegionSequence=Sequence([_code("51185008", "SCT", "Chest", "4030")]),
            )
        ]
    )
    shared.MRImageFrameTypeSequence = Sequence(
        [
            _item(
                FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
                ComplexImageComponent="MAGNITUDE",
                AcquisitionContrast="T1",
            )
        ]
    )
    shared.MRTimingAndRelatedParametersSequence = Sequence(
        [
            _item(
                RepetitionTime="8.2",
                FlipAngle="12",
                EchoTrainLength=1,
                RFEchoTrainLength=1,
                GradientEchoTrainLength=1,
                SpecificAbsorptionRateSequence=Sequence(
                    [
                        _item(
                            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                            SpecificAbsorptionRateValue=0.1,
                        )
                    ]
                ),
                GradientOutputType="DB_DT",
                GradientOutput=10.0,
                OperatingModeSequence=Sequence(
                    [_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")]
                ),
            )
        ]
    )
    shared.MRFOVGeometrySequence = Sequence(
        [
            _item(
                InPlanePhaseEncodingDirection="ROW",
                MRAcquisitionFrequencyEncodingSteps=size,
                MRAcquisitionPhaseEncodingStepsInPlane=size,
                PercentSampling="100",
                PercentPhaseFieldOfView="100",
            )
        ]
    )
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=3.7)])
    shared.MRModifierSequence = Sequence(
        [
            _item(
                InversionRecovery="NO",
                FlowCompensation="NONE",
                Spoiling="RF",
                T2Preparation="NO",
                SpectrallySelectedExcitation="NONE",
                SpatialPresaturation="NONE",
                PartialFourier="NO",
                ParallelAcquisition="NO",
            )
        ]
    )
    shared.MRImagingModifierSequence = Sequence(
        [
            _item(
                MagnetizationTransfer="NONE",
                BloodSignalNulling="NO",
                Tagging="NONE",
                TransmitterFrequency=63.9,
                PixelBandwidth="250",
            )
        ]
    )
    shared.MRReceiveCoilSequence = Sequence(
        [
            _item(
                ReceiveCoilName="BODY",
                ReceiveCoilManufacturerName="SYNTH MEDICAL",
                ReceiveCoilType="BODY",
                QuadratureReceiveCoil="YES",
            )
        ]
    )
    shared.MRTransmitCoilSequence = Sequence(
        [
            _item(
                TransmitCoilName="BODY",
                TransmitCoilManufacturerName="SYNTH MEDICAL",
                TransmitCoilType="BODY",
            )
        ]
    )
    shared.PixelValueTransformationSequence = Sequence(
        [_item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")]
    )
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages="1")])
    mapping = _item(
        RealWorldValueFirstValueMapped=0,
        RealWorldValueLastValueMapped=4095,
        RealWorldValueIntercept=0.0,
        RealWorldValueSlope=1.0,
        LUTExplanation="SIGNAL INTENSITY",
        LUTLabel="SI",
        MeasurementUnitsCodeSequence=Sequence([_code("1", "UCUM", "no units")]),
    )
    shared.RealWorldValueMappingSequence = Sequence([mapping])
    return shared


def make_enhanced_mr(*, seed: int = 0, size: int = 16, frames: int = 2) -> Dataset:
    """One Enhanced MR Image Storage instance (multi-frame functional groups, one stack).

    Parameters
    ----------
    seed
        Seed of the fake patient and the UIDs.
    size
        Rows and columns.
    frames
        Frames, one slice each, of stack "1".

    Returns
    -------
    pydicom.dataset.Dataset
        With ``file_meta`` set (Explicit VR Little Endian).
    """
    ds = _base(ENHANCED_MR_IMAGE_STORAGE, "MR", seed)
    root = f"emr/{seed}"
    _frame_of_reference(ds, root)
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.AcquisitionDuration = 60.0
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = "1.5"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T1"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    # MR Pulse Sequence: PulseSequenceName is Type 1C for original images.
    ds.PulseSequenceName = "GRE3D"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.NumberOfKSpaceTrajectories = 1
    ds.CoverageOfKSpace = "FULL"
    ds.AcquisitionContextSequence = Sequence()
    # Multi-frame Dimension: frames are indexed by stack and position in the stack.
    organization = derived_uid(root, "dimensions")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=organization)])
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=organization,
                DimensionIndexPointer=0x00209056,  # StackID
                FunctionalGroupPointer=0x00209111,  # FrameContentSequence
            ),
            _item(
                DimensionOrganizationUID=organization,
                DimensionIndexPointer=0x00209057,  # InStackPositionNumber
                FunctionalGroupPointer=0x00209111,
            ),
        ]
    )
    ds.NumberOfFrames = frames
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_mr_groups(size)])
    per_frame = []
    for index in range(frames):
        group = Dataset()
        group.FrameContentSequence = Sequence(
            [
                _item(
                    FrameAcquisitionDateTime=ds.AcquisitionDateTime,
                    FrameReferenceDateTime=ds.AcquisitionDateTime,
                    FrameAcquisitionDuration=30.0,
                    StackID="1",
                    InStackPositionNumber=index + 1,
                    DimensionIndexValues=[1, index + 1],
                )
            ]
        )
        group.PlanePositionSequence = Sequence(
            [_item(ImagePositionPatient=["-8", "-8", f"{2.0 * index:.1f}"])]
        )
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    _pixels(ds, size, size, frames)
    return ds
