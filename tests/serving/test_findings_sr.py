"""The findings SR: an IHE AIR Comprehensive 3D SR in the source's study, read back intact."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, Comprehensive3DSRStorage

from medai.dicom.synth import generate
from medai.serving.inference.findings import Finding
from medai.serving.inference.report import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    build_findings_sr,
    finding_code,
)
from tests.utils.dciodvfy import DCIODVFY, errors

FINDINGS = (
    Finding("nodule", 0.8312, 0.5, True),
    Finding("effusion", 0.1, 0.4, False),
    Finding("cardiomegaly", 0.61, 0.55, True),
)
MODEL, VERSION = "chest-xray-triage", "7"
ORG_ROOT = "1.2.826.0.1.9999999.77"
"""An organisation's UID root, for the tests (not a registered one)."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A synthetic chest radiograph with its (fake) identifying patient and study data."""
    synth = generate(
        tmp_path_factory.mktemp("synth"), studies=1, seed=5, sites=("site-a",), image_size=32
    )
    return dcmread(synth.files[0])


@pytest.fixture(autouse=True)
def strict_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    # A value that breaks its VR must fail the test, not be written with a warning.
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)


def _round_trip(sr: Dataset) -> Dataset:
    buffer = io.BytesIO()
    dcmwrite(buffer, sr, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()))


def _items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _groups(ds: Dataset) -> dict[str, Dataset]:
    """Measurement groups by their tracking identifier (the label)."""
    groups = {}
    for item in _items(ds):
        if item.ValueType == "CONTAINER" and _name(item) == "Measurement Group":
            (tracking,) = [c for c in item.ContentSequence if _name(c) == "Tracking Identifier"]
            groups[str(tracking.TextValue)] = item
    return groups


def test_sr_is_in_the_source_study_with_the_patient(source: Dataset) -> None:
    sr = _round_trip(build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION))

    assert sr.SOPClassUID == Comprehensive3DSRStorage  # the IOD of IHE AIR
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPInstanceUID != source.SOPInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        assert sr[keyword].value == source[keyword].value
    assert sr.AccessionNumber == source.AccessionNumber
    assert MODEL in sr.SeriesDescription and VERSION in sr.SeriesDescription
    # A model's output: complete, but preliminary until a radiologist verifies it.
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    (series,) = evidence.ReferencedSeriesSequence
    (referenced,) = series.ReferencedSOPSequence
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert referenced.ReferencedSOPClassUID == source.SOPClassUID


def test_each_finding_has_its_code_probability_decision_and_source(source: Dataset) -> None:
    sr = _round_trip(build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION))
    groups = _groups(sr)
    assert sorted(groups) == sorted(f.label for f in FINDINGS)
    for finding in FINDINGS:
        items = list(groups[finding.label].ContentSequence)
        by_name = {_name(item): item for item in items}
        code = finding_code(finding.label)

        found = by_name["Finding"].ConceptCodeSequence[0]
        assert (found.CodeValue, found.CodingSchemeDesignator) == (code.value, "SCT")
        certainty = by_name["Certainty of Finding"].MeasuredValueSequence[0]
        assert float(certainty.NumericValue) == pytest.approx(100 * finding.probability)
        assert certainty.MeasurementUnitsCodeSequence[0].CodeValue == "%"
        decision = by_name[code.meaning].ConceptCodeSequence[0].CodeMeaning
        assert decision == ("Present" if finding.positive else "Absent")
        assert by_name["Algorithm Name"].TextValue == MODEL
        assert by_name["Algorithm Version"].TextValue == VERSION
        assert str(finding.threshold) in by_name["Algorithm Parameters"].TextValue
        image = by_name["Source of Measurement"].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert image.ReferencedSOPClassUID == source.SOPClassUID


def test_the_model_is_the_device_observer(source: Dataset) -> None:
    sr = _round_trip(build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION))
    context = {_name(item): item for item in sr.ContentSequence}
    assert context["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert context["Device Observer Name"].TextValue == MODEL
    again = build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION)
    other = build_findings_sr(source, FINDINGS, model_name=MODEL, model_version="8")

    def device_uid(ds: Dataset) -> str:
        (item,) = [i for i in ds.ContentSequence if _name(i) == "Device Observer UID"]
        return str(item.UID)

    assert device_uid(again) == device_uid(sr)
    assert device_uid(other) != device_uid(sr)


def test_unknown_labels_get_the_declared_private_scheme(source: Dataset) -> None:
    findings = (Finding("ground glass opacity, upper lobe", 0.3, 0.5, False),)
    sr = _round_trip(build_findings_sr(source, findings, model_name=MODEL, model_version="1"))
    (group,) = _groups(sr).values()
    (found,) = [item for item in group.ContentSequence if _name(item) == "Finding"]
    code = found.ConceptCodeSequence[0]
    assert code.CodingSchemeDesignator == PRIVATE_SCHEME
    # Longer than SH's 16 characters: carried as a Long Code Value.
    assert code.LongCodeValue == "ground glass opacity, upper lobe"
    schemes = [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence]
    assert PRIVATE_SCHEME in schemes


def test_known_labels_map_to_snomed_whatever_their_spelling() -> None:
    assert finding_code("Pleural_Effusion").value == "60046008"
    assert finding_code("effusion").value == "60046008"
    assert finding_code("nodule").value == "27925004"
    assert finding_code("Cardiomegaly").scheme_designator == "SCT"


def test_a_source_missing_type2_attributes_still_gives_an_sr(source: Dataset) -> None:
    sparse = Dataset()
    sparse.update(source)
    for keyword in ("PatientSex", "PatientBirthDate", "StudyID", "ReferringPhysicianName"):
        del sparse[keyword]
    sr = _round_trip(build_findings_sr(sparse, FINDINGS, model_name=MODEL, model_version="1"))
    assert sr.PatientSex == "" and sr.StudyID == ""
    assert "PatientSex" not in sparse  # the caller's dataset is left alone


def test_a_source_without_uids_or_a_bad_probability_is_refused(source: Dataset) -> None:
    no_uid = Dataset()
    no_uid.update(source)
    del no_uid.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build_findings_sr(no_uid, FINDINGS, model_name=MODEL, model_version="1")
    with pytest.raises(ValueError, match="nodule"):
        build_findings_sr(
            source, [Finding("nodule", 1.5, 0.5, True)], model_name=MODEL, model_version="1"
        )


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump is not installed")
def test_dcmtk_reads_the_sr_without_complaint(source: Dataset, tmp_path: Path) -> None:
    sr = build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION)
    path = tmp_path / "findings.dcm"
    pydicom.dcmwrite(path, sr, enforce_file_format=True)
    # dsrdump checks the document's structure and each content item's value strictly
    # (no -E leniency options) and warns on stderr about anything it had to accept.
    done = subprocess.run(
        ["dsrdump", "+Pc", "+Pt", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "Comprehensive 3D SR Document" in done.stdout
    assert "TID 1500" in done.stdout and "TID 1501" in done.stdout
    assert "Certainty of Finding" in done.stdout


def _uids(ds: Dataset) -> dict[str, str]:
    """The UIDs the SR made itself: series, instance, device observer, tracking."""
    made = {"series": str(ds.SeriesInstanceUID), "instance": str(ds.SOPInstanceUID)}
    for item in _items(ds):
        if item.ValueType == "UIDREF":
            made[f"{_name(item)} {len(made)}"] = str(item.UID)
    return made


def test_every_uid_made_is_under_the_organisation_root(source: Dataset) -> None:
    root = ORG_ROOT
    sr = _round_trip(
        build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION, uid_root=root)
    )
    made = _uids(sr)
    assert len(made) == 2 + 1 + len(FINDINGS)  # series, instance, device, one per finding
    for uid in made.values():
        assert uid.startswith(root + "."), uid
        assert len(uid) <= 64
    assert len(set(made.values())) == len(made)


def test_without_a_root_the_uids_are_uuid_derived_never_pydicoms(source: Dataset) -> None:
    sr = _round_trip(build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION))
    for uid in _uids(sr).values():
        assert uid.startswith("2.25."), uid
        assert not uid.startswith(PYDICOM_ROOT_UID)
        assert len(uid) <= 64


def test_a_bad_uid_root_is_refused(source: Dataset) -> None:
    with pytest.raises(ValueError, match="MEDAI_ORG_UID_ROOT"):
        build_findings_sr(source, FINDINGS, model_name=MODEL, model_version="1", uid_root="1.02")


def test_the_sr_has_what_ihe_air_requires_of_an_ai_result(source: Dataset) -> None:
    """IHE AI Results (AIR): the content items an AIR image display relies on."""
    sr = _round_trip(build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION))
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    # General Equipment: the software that made the result.
    assert (sr.Manufacturer, sr.ManufacturerModelName) == (MANUFACTURER, MODEL)
    assert sr.SoftwareVersions
    # TID 1500 at the root: Imaging Measurement Report.
    title = sr.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("126000", "DCM")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    root = {_name(item): item for item in sr.ContentSequence}
    assert "Language of Content Item and Descendants" in root
    assert "Procedure reported" in root
    # Observer context: the model is the device (TID 1004).
    assert root["Observer Type"].ConceptCodeSequence[0].CodeValue == "121007"  # Device
    assert root["Device Observer UID"].UID
    assert root["Device Observer Name"].TextValue == MODEL
    assert root["Device Observer Manufacturer"].TextValue == MANUFACTURER
    assert root["Device Observer Model Name"].TextValue == MODEL
    # Referenced instances: the image library and the evidence list name the source.
    library = [i for i in _items(root["Image Library"]) if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library] == [
        source.SOPInstanceUID
    ]
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    # One TID 1501 group per finding: finding, algorithm (TID 4019), probability as a
    # measurement, qualitative evaluation, source image.
    groups = _groups(sr)
    assert len(groups) == len(FINDINGS)
    for group in groups.values():
        assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
        items = {_name(item): item for item in group.ContentSequence}
        assert {"Tracking Identifier", "Tracking Unique Identifier", "Finding"} <= set(items)
        assert items["Algorithm Name"].RelationshipType == "HAS CONCEPT MOD"
        assert items["Algorithm Version"].TextValue == VERSION
        assert items["Certainty of Finding"].ValueType == "NUM"
        finding = items["Finding"].ConceptCodeSequence[0].CodeMeaning
        assert items[finding].ValueType == "CODE"  # the qualitative evaluation
        assert items["Source of Measurement"].ValueType == "IMAGE"


def test_highdicom_reads_the_sr_back(source: Dataset) -> None:
    written = _round_trip(
        build_findings_sr(source, FINDINGS, model_name=MODEL, model_version=VERSION)
    )
    sr = hd.sr.Comprehensive3DSR.from_dataset(written)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (observer,) = report.get_observer_contexts()
    assert observer.observer_type.value == "121007"
    device = observer.observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.model_name == MODEL
    groups = report.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [f.label for f in FINDINGS]
    for group, finding in zip(groups, FINDINGS, strict=True):
        assert group.finding_type is not None
        assert group.finding_type.value == finding_code(finding.label).value
        (certainty,) = group.get_measurements(name=hd.sr.CodedConcept("111012", "DCM", "x"))
        assert certainty.value == pytest.approx(100 * finding.probability)
        (evaluation,) = group.get_qualitative_evaluations()
        decision = evaluation.value
        assert isinstance(decision, hd.sr.CodedConcept)
        assert decision.meaning == ("Present" if finding.positive else "Absent")
        (image,) = group.source_images
        assert image.referenced_sop_instance_uid == source.SOPInstanceUID


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("series_level", [False, True], ids=["image", "series"])
def test_dciodvfy_finds_no_error_in_the_sr(
    source: Dataset, series_level: bool, tmp_path: Path
) -> None:
    series: list[Dataset] = []
    if series_level:  # a volume's slices, all referenced
        for number in range(3):
            slice_ = Dataset()
            slice_.update(source)
            slice_.SOPInstanceUID = f"{source.SOPInstanceUID}.{number + 1}"
            series.append(slice_)
    sr = build_findings_sr(
        source,
        FINDINGS,
        model_name=MODEL,
        model_version=VERSION,
        series=series,
        uid_root=ORG_ROOT,
    )
    buffer = io.BytesIO()
    dcmwrite(buffer, sr, enforce_file_format=True)
    assert errors(buffer.getvalue()) == []


@pytest.mark.slow
def test_a_pacs_stores_the_sr_in_the_source_study(source: Dataset) -> None:
    """A real PACS (Orthanc) takes the SR over STOW-RS and files it beside the image."""
    from dicomweb_client.api import DICOMwebClient

    from tests.utils.orthanc import Orthanc, require_orthanc

    require_orthanc()
    sr = build_findings_sr(
        source, FINDINGS, model_name=MODEL, model_version=VERSION, uid_root=ORG_ROOT
    )
    image = io.BytesIO()
    dcmwrite(image, source, enforce_file_format=True)
    extra = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with Orthanc(aet="STMARY_PACS", extra_config=extra) as pacs:
        pacs.upload(image.getvalue())
        client = DICOMwebClient(url=pacs.dicomweb_url)
        stored = client.store_instances([_round_trip(sr)])
        assert not stored.get("FailedSOPSequence")
        (accepted,) = stored.ReferencedSOPSequence
        assert accepted.ReferencedSOPInstanceUID == sr.SOPInstanceUID
        found = client.search_for_instances(study_instance_uid=source.StudyInstanceUID)
        classes = {Dataset.from_json(item).SOPClassUID for item in found}
        assert classes == {source.SOPClassUID, Comprehensive3DSRStorage}
        back = client.retrieve_instance(
            source.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID
        )
        assert back.ContentSequence == _round_trip(sr).ContentSequence
