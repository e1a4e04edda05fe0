"""De-identified output stays valid DICOM: dciodvfy (dicom3tools) finds no error it did not
find in the input, and the attributes an IOD requires survive as their type allows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, config
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence

from medai.collection.deid import Deidentifier, DeidOptions
from medai.collection.pseudonymize import Pseudonymizer
from medai.dicom.synth import make_cr, make_ct_slice, make_dx, make_enhanced_mr, make_mr
from tests.utils.dciodvfy import DCIODVFY, added_errors, errors
from tests.utils.deid_factories import read, write

PSEUDO = Pseudonymizer(bytes(range(32)))

needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed: apt install dicom3tools"
)

SYNTHETIC: dict[str, Callable[[], Dataset]] = {
    "MR": make_mr,
    "enhanced MR": make_enhanced_mr,
    "DX": make_dx,
    "CR": make_cr,
    "CT": lambda: make_ct_slice(rows=16, columns=16),
}
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
)


@pytest.fixture(autouse=True)
def strict_values(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every value medai writes must be valid for its VR."""
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)
    yield


def deid(ds: Dataset, options: DeidOptions | None = None) -> Dataset:
    return read(write(Deidentifier(options or DeidOptions(), PSEUDO).deidentify(ds)))


@needs_dciodvfy
@pytest.mark.parametrize("kind", sorted(set(SYNTHETIC) - {"CT"}))
def test_the_synthetic_instances_are_valid(kind: str) -> None:
    assert errors(write(SYNTHETIC[kind]())) == []


@needs_dciodvfy
@pytest.mark.parametrize(
    "options",
    [DeidOptions(), DeidOptions(False, False, False, False)],
    ids=["four options", "basic profile"],
)
@pytest.mark.parametrize("kind", sorted(SYNTHETIC))
def test_deidentifying_a_synthetic_instance_adds_no_dciodvfy_error(
    kind: str, options: DeidOptions
) -> None:
    before = write(SYNTHETIC[kind]())
    after = write(Deidentifier(options, PSEUDO).deidentify(read(before)))
    assert added_errors(before, after) == set()


@needs_dciodvfy
@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_deidentifying_pydicom_test_files_adds_no_dciodvfy_error(name: str) -> None:
    before = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    after = write(Deidentifier(DeidOptions(), PSEUDO).deidentify(read(before)))
    assert added_errors(before, after) == set()


# --- the reported defects, one by one --------------------------------------------------


def test_position_reference_indicator_type_2_is_kept_and_cleaned() -> None:
    ds = make_mr()
    ds.PositionReferenceIndicator = f"SN {ds.PatientID}"
    out = deid(ds)
    assert "PositionReferenceIndicator" in out  # Type 2: present, possibly empty
    assert ds.PatientID not in str(out.PositionReferenceIndicator)
    basic = deid(make_mr(), DeidOptions(False, False, False, False))
    assert "PositionReferenceIndicator" in basic  # emptied without Clean Descriptors
    assert basic.PositionReferenceIndicator in ("", None)


def test_required_machine_labels_outside_table_e11_are_kept() -> None:
    cr = deid(make_cr())
    assert cr.ModalityLUTSequence[0].ModalityLUTType == "US"
    mr = deid(make_enhanced_mr())
    mapping = mr.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "SI"
    assert mapping.LUTExplanation  # Type 1 free text: cleaned, never empty
    assert mr.PulseSequenceName == "GRE3D"
    assert [g.FrameContentSequence[0].StackID for g in mr.PerFrameFunctionalGroupsSequence] == [
        "1",
        "1",
    ]
    coils = mr.SharedFunctionalGroupsSequence[0].MRReceiveCoilSequence[0]
    assert coils.ReceiveCoilManufacturerName == "SYNTH MEDICAL"


def test_a_type_1_free_text_emptied_by_cleaning_gets_a_dummy() -> None:
    ds = make_enhanced_mr()
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    mapping.LUTExplanation = ds.PatientID
    out = deid(ds).SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert out.LUTExplanation  # Type 1: never empty
    assert ds.PatientID not in out.LUTExplanation


def test_an_emptied_issuer_of_accession_number_item_is_removed_whole() -> None:
    ct = deid(make_ct_slice(rows=16, columns=16))
    assert "IssuerOfAccessionNumberSequence" not in ct  # Type 3, its only item emptied
    for request in ct.get("RequestAttributesSequence", []):
        assert "IssuerOfAccessionNumberSequence" not in request
    # An item that keeps the type of a designator whose value is gone is no macro either.
    ds = make_mr()
    ds.IssuerOfAccessionNumberSequence[0].UniversalEntityIDType = "ISO"
    assert "IssuerOfAccessionNumberSequence" not in deid(ds)


def test_an_emptied_type_2_sequence_stays_present_with_no_items() -> None:
    ds = make_dx()
    item = ds.AnatomicRegionSequence[0]
    for keyword in list(item.dir()):
        delattr(item, keyword)
    item.add_new(0x00111001, "LO", "private only")  # no creator: removed as private
    out = deid(ds)
    assert "AnatomicRegionSequence" in out
    assert len(out.AnatomicRegionSequence) == 0


def test_an_untouched_empty_item_is_left_alone() -> None:
    ds = make_mr()
    ds.DerivationCodeSequence = Sequence([Dataset()])  # outside Table E.1-1: walked
    assert len(deid(ds).DerivationCodeSequence) == 1


def test_only_patient_and_procedure_dates_are_shifted() -> None:
    ds = make_dx()
    version = ds.AnatomicRegionSequence[0].ContextGroupVersion
    study_date, created = ds.StudyDate, ds.InstanceCreationDate
    out = deid(ds)
    assert out.AnatomicRegionSequence[0].ContextGroupVersion == version
    assert out.ViewCodeSequence[0].ContextGroupVersion == version
    assert out.StudyDate != study_date  # about the procedure: shifted
    assert out.InstanceCreationDate != created  # outside Table E.1-1, yet about the procedure
    basic = deid(make_dx(), DeidOptions(False, False, False, False))
    assert basic.AnatomicRegionSequence[0].ContextGroupVersion == version
    assert "InstanceCreationDate" not in basic
