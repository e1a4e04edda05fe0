"""The centre's re-screen of edge-de-identified instances (medai.collection.edge_screen).

What medai's own Deidentifier writes must pass, under every option set and encoding;
anything that lacks its markers or still looks identified must be refused with the
right reason code, and the reason must quote no value from the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medai.collection.deid import Deidentifier, DeidOptions
from medai.collection.edge_receipts import receipt_hash, receipts_by_day
from medai.collection.edge_screen import EdgeScreen
from medai.collection.pseudonymize import Pseudonymizer
from medai.dicom.read import parse_instance
from medai.dicom.synth import SynthResult, generate
from medai.dicom.write import encode_part10
from medai.errors import EdgeIdentified, EdgeNotDeidentified, Rejected
from tests.utils.deid_factories import PHI_STRINGS, PRIVATE_SAFE, make_ct, read, write

PSEUDO = Pseudonymizer(bytes(range(32)))
OPTIONS = {
    "campaign": DeidOptions(),
    "safe-private": DeidOptions(safe_private_tags=frozenset({PRIVATE_SAFE})),
    "basic-only": DeidOptions(
        retain_longitudinal_modified_dates=False,
        retain_patient_characteristics=False,
        retain_device_identity=False,
        clean_descriptors=False,
    ),
}


def _edge_bytes(ds: Dataset, options: DeidOptions) -> bytes:
    """What an edge stores and forwards: medai's de-identified Part 10 bytes."""
    return encode_part10(Deidentifier(options, PSEUDO).deidentify(ds))


def _screen(data: bytes, options: DeidOptions) -> None:
    EdgeScreen(options).screen(parse_instance(data, max_bytes=1 << 26))


def _rewritten(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    change(ds)
    return write(ds)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out: Path = tmp_path_factory.mktemp("synth")
    return generate(out, studies=3, seed=5, sites=("site-a",), image_size=32, ct_slices=2)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("syntax", [None, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_medais_own_output_passes(options: DeidOptions, syntax: pydicom.uid.UID | None) -> None:
    ds = make_ct()  # every kind of PHI the de-identification tests plant
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds = read(write(ds))
    _screen(_edge_bytes(ds, options), options)


def test_synthetic_studies_pass(synth: SynthResult) -> None:
    for path in synth.files:
        ds = parse_instance(path.read_bytes(), max_bytes=1 << 26)
        _screen(_edge_bytes(ds, OPTIONS["campaign"]), OPTIONS["campaign"])


def test_an_instance_never_deidentified_lacks_the_markers(synth: SynthResult) -> None:
    for path in synth.files:
        with pytest.raises(EdgeNotDeidentified) as caught:
            _screen(path.read_bytes(), OPTIONS["campaign"])
        assert caught.value.reason_code == "edge-not-deidentified"


def _drop_identity_removed(ds: Dataset) -> None:
    del ds.PatientIdentityRemoved


def _other_method(ds: Dataset) -> None:
    ds.DeidentificationMethod = "Our own anonymizer 2.0"


def _original_study_uid(ds: Dataset) -> None:
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.12345"


def _original_referenced_uid(ds: Dataset) -> None:
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.777"


@pytest.mark.parametrize(
    "change",
    [_drop_identity_removed, _other_method, _original_study_uid, _original_referenced_uid],
)
def test_missing_or_wrong_markers(change: Callable[[Dataset], None]) -> None:
    options = OPTIONS["campaign"]
    data = _rewritten(_edge_bytes(make_ct(), options), change)
    with pytest.raises(EdgeNotDeidentified):
        _screen(data, options)


def _restore_name(ds: Dataset) -> None:
    ds.PatientName = "Musterfrau^Erika"


def _name_in_descriptor(ds: Dataset) -> None:
    ds.StudyDescription = "Chest Musterfrau"


def _private_tag(ds: Dataset) -> None:
    block = ds.private_block(0x0011, "OTHER VENDOR", create=True)
    block.add_new(0x01, "LO", "Other Vendor PHI")


def _removed_attribute(ds: Dataset) -> None:
    ds.PatientAddress = "Hauptstrasse 1"


def _physician_name(ds: Dataset) -> None:
    ds.ReferringPhysicianName = "Hausarzt^Hans"


def _emptied_attribute_with_value(ds: Dataset) -> None:
    ds.AccessionNumber = "ACC20240301X9"


def _narrative(ds: Dataset) -> None:
    ds.ImageComments = "lung nodule"


def _burned_in(ds: Dataset) -> None:
    ds.BurnedInAnnotation = "YES"


def _sender_in_file_meta(ds: Dataset) -> None:
    ds.file_meta.SourceApplicationEntityTitle = "KLINIKUM_PACS"


def _nested_name(ds: Dataset) -> None:
    item = Dataset()
    item.PatientName = "Nested^Person"
    ds.OtherPatientIDsSequence = pydicom.Sequence([item])


IDENTIFIED = [
    _restore_name,
    _name_in_descriptor,
    _private_tag,
    _removed_attribute,
    _physician_name,
    _emptied_attribute_with_value,
    _narrative,
    _burned_in,
    _sender_in_file_meta,
    _nested_name,
]


@pytest.mark.parametrize("change", IDENTIFIED)
def test_identified_instances_are_refused_naming_no_value(
    change: Callable[[Dataset], None],
) -> None:
    options = OPTIONS["campaign"]
    clean = _rewritten(_edge_bytes(make_ct(), options), lambda ds: None)
    _screen(clean, options)  # rewriting alone changes nothing the screen minds
    with pytest.raises(EdgeIdentified) as caught:
        _screen(_rewritten(clean, change), options)
    assert caught.value.reason_code == "edge-identified"
    message = str(caught.value)
    assert not [text for text in PHI_STRINGS if text in message]
    assert "KLINIKUM" not in message


def test_a_kept_private_tag_passes_only_where_the_campaign_keeps_it() -> None:
    kept = OPTIONS["safe-private"]
    data = _edge_bytes(make_ct(), kept)
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).get((0x0009, 0x1002))
    _screen(data, kept)
    with pytest.raises(EdgeIdentified, match="private"):
        _screen(_rewritten(data, _private_tag), kept)  # one the campaign does not keep
    with pytest.raises(EdgeNotDeidentified):
        _screen(data, OPTIONS["campaign"])  # another campaign's stamp


def test_every_refusal_is_a_quarantine_reason() -> None:
    assert issubclass(EdgeIdentified, Rejected) and issubclass(EdgeNotDeidentified, Rejected)


def test_receipt_hash_is_the_contracts() -> None:
    import datetime as dt
    import hashlib

    assert receipt_hash([]) == hashlib.sha256(b"").hexdigest()
    assert receipt_hash(["2.25.2", "2.25.10"]) == hashlib.sha256(b"2.25.10\n2.25.2").hexdigest()
    day = dt.date(2026, 12, 1)
    assert receipts_by_day([(day, "2.25.2"), (day, "2.25.10"), (day, "2.25.2")]) == {
        "2026-12-01": {"count": 2, "hash": receipt_hash(["2.25.10", "2.25.2"])}
    }
