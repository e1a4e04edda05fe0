"""The findings of one prediction as a DICOM Comprehensive 3D SR (highdicom), to go back to PACS.

:func:`build_findings_sr` writes an Imaging Measurement Report (TID 1500) in a new series
of the source's study, as the IHE AI Results profile (AIR, an IHE Radiology supplement)
asks of an AI result: the Comprehensive 3D SR IOD (the one AIR's Evidence Creator writes),
TID 1500 as the root template, and in it

- the observation context names the model as a device observer (TID 1004: the device
  UID, derived from the model's name and version, its name and model name, the
  manufacturer "medai");
- the image library (TID 1600) lists the source instance;
- one measurement group (TID 1501) per finding, whatever its outcome, with
    - the finding type: the label's code (:func:`finding_code`),
    - the algorithm (TID 4019): the model's name and version, and the operating
      threshold as its parameter,
    - the probability as "Certainty of Finding" (111012, DCM; CID 6048, the CAD operating
      point axis label) in percent (UCUM ``%``), as DICOM's CAD reports express it,
    - a qualitative evaluation of the finding: Present (52101004, SCT) when the
      probability reaches the threshold, otherwise Absent (272519000, SCT) (CID 240),
    - the source image it was computed from (its SOP Class and Instance UID); for a
      series-level model (a CT volume), every slice of the series that made the volume,
      which the image library and the evidence list too, so the SR references the series.

AIR primitives that do not apply: regions, segmentations and parametric maps (the model
classifies whole images; its Grad-CAM heatmap is a PNG for people, not a DICOM result),
and tracking across studies (each finding's tracking identifier is new).

UIDs (series, instance, tracking, device) are made under the organisation's root
(``MEDAI_ORG_UID_ROOT``) or, without one, as ``2.25`` UUID UIDs
(:mod:`medai.dicom.uids`): never under pydicom's shared root.

The document is complete (every label is reported) but preliminary and unverified: a
model's output until a radiologist signs it. Patient and study modules are copied from the
source, so the SR identifies the patient: it is built in memory for the caller and is
never written to disk here.

Finding codes come from DICOM PS3.16 through :data:`pydicom.sr.codedict.codes` (e.g. the
standard lists cardiomegaly as 287272002, SCT). A label without one gets a code of the
private scheme ``99MEDAI`` (code value and meaning the label), which the SR declares in its
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medai import __version__
from medai.dicom.uids import derived_uid, new_uid
from medai.serving.inference.findings import Finding

__all__ = [
    "MANUFACTURER",
    "PRIVATE_SCHEME",
    "SR_SERIES_NUMBER",
    "build_findings_sr",
    "finding_code",
]

MANUFACTURER: Final = "medai"
PRIVATE_SCHEME: Final = "99MEDAI"
SR_SERIES_NUMBER: Final = 990
"""Series number of the SR: high, so that viewers list it after the images."""

# Labels (lower case, letters only) -> keyword of the SNOMED CT code in DICOM PS3.16.
_SCT_KEYWORDS: Final = {
    "nodule": "Nodule",
    "lungnodule": "Nodule",
    "pulmonarynodule": "Nodule",
    "effusion": "PleuralEffusion",
    "pleuraleffusion": "PleuralEffusion",
    "cardiomegaly": "Cardiomegaly",
    "pneumothorax": "Pneumothorax",
    "edema": "PulmonaryEdema",
    "oedema": "PulmonaryEdema",
    "pulmonaryedema": "PulmonaryEdema",
    "mass": "Mass",
    "fibrosis": "Fibrosis",
}
# Looked up once, so a keyword pydicom does not know fails at import, not at a request.
_SCT_CODES: Final[dict[str, Code]] = {
    label: getattr(codes.SCT, keyword) for label, keyword in _SCT_KEYWORDS.items()
}
# LO (64 characters) is the longest text most of these attributes hold.
_LO: Final = 64
# Type 2 attributes of the patient and study modules that highdicom reads from the source.
_TYPE2: Final = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def finding_code(label: str) -> CodedConcept:
    """The coded concept of a model label: SNOMED CT where DICOM has one, else ``99MEDAI``.

    Parameters
    ----------
    label
        The label as the model was trained on it (``"effusion"``, ``"Pleural_Effusion"``).

    Returns
    -------
    highdicom.sr.CodedConcept
    """
    code = _SCT_CODES.get(re.sub(r"[^a-z]", "", label.lower()))
    if code is not None:
        return CodedConcept(code.value, code.scheme_designator, code.meaning)
    return CodedConcept(label, PRIVATE_SCHEME, label[:_LO])


def build_findings_sr(
    source: Dataset,
    findings: Sequence[Finding],
    *,
    model_name: str,
    model_version: str,
    series: Sequence[Dataset] = (),
    uid_root: str | None = None,
) -> Dataset:
    """A Comprehensive 3D SR of ``findings`` in the study of ``source`` (see the module docstring).

    Parameters
    ----------
    source
        The instance the findings were computed on (the study's first as sent), with its
        identifying patient and study attributes; read only.
    findings
        One per label of the model, positive or not.
    model_name, model_version
        The registered model and version that produced them.
    series
        For a prediction on a whole series (a volume): the headers of its slices, in
        order, all referenced as the findings' source; empty for one image's findings.
    uid_root
        The organisation's UID root (``Settings.org_uid_root``) for the SR's new UIDs;
        None: ``2.25`` UUID-derived UIDs.

    Returns
    -------
    pydicom.dataset.Dataset
        A :class:`highdicom.sr.Comprehensive3DSR`: same StudyInstanceUID as ``source``, new
        series and instance UIDs, series description naming the model. Write it with
        ``dcmwrite(buffer, sr)``.

    Raises
    ------
    ValueError
        ``source`` lacks the UIDs the SR must reference, a probability or threshold is
        outside [0, 1], or ``uid_root`` is not a UID root.
    """
    missing = [k for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID") if k not in source]
    if missing:
        raise ValueError(f"the source instance has no {', '.join(missing)}")
    for finding in findings:
        if not (0.0 <= finding.probability <= 1.0 and 0.0 <= finding.threshold <= 1.0):
            raise ValueError(
                f"{finding.label}: probability and threshold must be in [0, 1], got "
                f"{finding.probability} and {finding.threshold}"
            )
    sources = list(series) or [source]
    evidence = [_evidence(ds) for ds in sources]
    groups = [_group(finding, sources, model_name, model_version, uid_root) for finding in findings]
    report = MeasurementReport(
        observation_context=ObservationContext(
            observer_device_context=ObserverContext(
                observer_type=codes.cid270.Device,
                observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                    # The same model version is always the same device.
                    uid=derived_uid(uid_root, "medai-model", model_name, model_version),
                    name=model_name[:_LO],
                    manufacturer_name=MANUFACTURER,
                    model_name=model_name[:_LO],
                ),
            )
        ),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=evidence,
    )
    private = [f.label for f in findings if finding_code(f.label).scheme_designator == "99MEDAI"]
    schemes = (
        [
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="medai model labels",
                responsible_organization=MANUFACTURER,
            )
        ]
        if private
        else None
    )
    sr: Dataset = Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=new_uid(uid_root),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=new_uid(uid_root),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"AI findings: {model_name} v{model_version}"[:_LO],
        manufacturer_model_name=model_name[:_LO],
        software_versions=__version__,
        coding_schemes=schemes,
    )
    return sr


def _evidence(source: Dataset) -> Dataset:
    """A shallow copy of ``source`` with missing Type 2 patient/study attributes empty.

    Real-world files omit some of them; highdicom reads each, and empty is what the
    standard allows for an unknown Type 2 value.
    """
    evidence = Dataset()
    evidence.update(source)
    if hasattr(source, "file_meta"):
        evidence.file_meta = source.file_meta
    for keyword in _TYPE2:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def _group(
    finding: Finding,
    sources: Sequence[Dataset],
    model_name: str,
    model_version: str,
    uid_root: str | None,
) -> MeasurementsAndQualitativeEvaluations:
    concept = finding_code(finding.label)
    algorithm = AlgorithmIdentification(
        name=model_name[:_LO],
        version=model_version[:_LO],
        parameters=[f"operating threshold {finding.threshold:.6g}"],
    )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=new_uid(uid_root), identifier=finding.label),
        finding_type=concept,
        algorithm_id=algorithm,
        measurements=[
            Measurement(
                name=codes.DCM.CertaintyOfFinding,
                value=round(100.0 * finding.probability, 6),
                unit=codes.UCUM.Percent,
            )
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(
                name=concept,
                value=codes.SCT.Present if finding.positive else codes.SCT.Absent,
            )
        ],
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            )
            for source in sources
        ],
    )
