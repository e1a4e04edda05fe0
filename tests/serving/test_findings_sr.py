"""The findings SR: a standard Comprehensive SR in the source's study, read back intact."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from medai.dicom.synth import generate
from medai.serving.inference.findings import Finding
from medai.serving.inference.report import PRIVATE_SCHEME, build_findings_sr, finding_code

FINDINGS = (
    Finding("nodule", 0.8312, 0.5, True),
    Finding("effusion", 0.1, 0.4, False),
    Finding("cardiomegaly", 0.61, 0.55, True),
)
MODEL, VERSION = "chest-xray-triage", "7"


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

    assert sr.SOPClassUID == ComprehensiveSRStorage
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
    assert "Comprehensive SR Document" in done.stdout
    assert "TID 1500" in done.stdout and "TID 1501" in done.stdout
    assert "Certainty of Finding" in done.stdout
