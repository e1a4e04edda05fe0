"""Tests for the PS3.15 Table E.1-1 data: its rows, and its actions applied tag by tag."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_description, dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

from medai.collection.deid import Deidentifier, DeidOptions, narrative
from medai.collection.deid.table import (
    BASIC_CODES,
    TABLE_EDITION,
    TYPE1_KEYWORDS,
    ProfileRow,
    load_table,
    resolve_action,
)
from medai.collection.pseudonymize import Pseudonymizer
from tests.utils.deid_factories import make_ct, read, write

ROWS = load_table()
BY_TAG = {row.tag: row for row in ROWS}
BASIC = DeidOptions(
    retain_longitudinal_modified_dates=False,
    retain_patient_characteristics=False,
    retain_device_identity=False,
    clean_descriptors=False,
)
CAMPAIGN = DeidOptions()
OPTION_VALUES = {"", "K", "C", "X"}

FULL_DATES, MOD_DATES = "retain_long_full_dates", "retain_long_modified_dates"
DEV, PAT, DESC, INST = (
    "retain_device_identity",
    "retain_patient_characteristics",
    "clean_descriptors",
    "retain_institution_identity",
)
UIDS, PRIV = "retain_uids", "retain_safe_private"
DATES = {FULL_DATES: "K", MOD_DATES: "C"}

# Rows checked by hand against PS3.15 Table E.1-1: tag -> (basic, option entries).
SPOT_CHECKS: dict[str, tuple[str, dict[str, str]]] = {
    "(0010,0010)": ("Z", {}),  # Patient's Name
    "(0010,0020)": ("Z", {}),  # Patient ID
    "(0010,0030)": ("Z", {}),  # Patient's Birth Date
    "(0010,0032)": ("X", {}),  # Patient's Birth Time
    "(0008,0050)": ("Z", {}),  # Accession Number
    "(0008,0020)": ("Z", DATES),  # Study Date
    "(0008,0030)": ("Z", DATES),  # Study Time
    "(0008,0021)": ("X/D", DATES),  # Series Date
    "(0008,0022)": ("X/Z", DATES),  # Acquisition Date
    "(0008,0023)": ("Z/D", DATES),  # Content Date
    "(0008,002A)": ("X/Z/D", DATES),  # Acquisition DateTime
    "(0020,000D)": ("U", {UIDS: "K"}),  # Study Instance UID
    "(0020,000E)": ("U", {UIDS: "K"}),  # Series Instance UID
    "(0008,0018)": ("U", {UIDS: "K"}),  # SOP Instance UID
    "(0020,0052)": ("U", {UIDS: "K"}),  # Frame of Reference UID
    "(0008,1155)": ("U", {UIDS: "K"}),  # Referenced SOP Instance UID
    "(0008,1140)": ("X/Z/U*", {UIDS: "K"}),  # Referenced Image Sequence
    "(0008,2112)": ("X/Z/U*", {UIDS: "K"}),  # Source Image Sequence
    "(0008,0080)": ("X/Z/D", {INST: "K"}),  # Institution Name
    "(0008,0081)": ("X", {INST: "K"}),  # Institution Address
    "(0008,0090)": ("Z", {}),  # Referring Physician's Name
    "(0008,1050)": ("X", {}),  # Performing Physician's Name
    "(0008,1070)": ("X/Z/D", {}),  # Operators' Name
    "(0010,1000)": ("X", {}),  # Other Patient IDs
    "(0010,1001)": ("X", {}),  # Other Patient Names
    "(0010,1040)": ("X", {}),  # Patient's Address
    "(0010,2154)": ("X", {}),  # Patient's Telephone Numbers
    "(0010,0021)": ("X", {}),  # Issuer of Patient ID
    "(0018,1000)": ("X/Z/D", {DEV: "K"}),  # Device Serial Number
    "(0008,1010)": ("X/Z/D", {DEV: "K"}),  # Station Name
    "(0010,1010)": ("X", {PAT: "K"}),  # Patient's Age
    "(0010,0040)": ("Z", {PAT: "K"}),  # Patient's Sex
    "(0010,1030)": ("X", {PAT: "K"}),  # Patient's Weight
    "(0010,1020)": ("X", {PAT: "K"}),  # Patient's Size
    "(0010,2160)": ("X", {PAT: "K"}),  # Ethnic Group
    "(0010,2110)": ("X", {PAT: "C", DESC: "C"}),  # Allergies
    "(0008,103E)": ("X", {DESC: "C"}),  # Series Description
    "(0008,1030)": ("X", {DESC: "C"}),  # Study Description
    "(0020,4000)": ("X", {DESC: "C"}),  # Image Comments
    "(0018,1030)": ("X/D", {DESC: "C"}),  # Protocol Name
    "(0020,0010)": ("Z", {}),  # Study ID
    "(0040,0275)": ("X", {DESC: "C"}),  # Request Attributes Sequence
    "(0008,1120)": ("X", {UIDS: "X"}),  # Referenced Patient Sequence
    "(FFFA,FFFA)": ("X", {}),  # Digital Signatures Sequence
    "(FFFC,FFFC)": ("X", {}),  # Data Set Trailing Padding
    "(50XX,XXXX)": ("X", {"clean_graphics": "C"}),  # Curve Data
    "(60XX,3000)": ("X", {"clean_graphics": "C"}),  # Overlay Data
    "(GGGG,EEEE) WHERE GGGG IS ODD": ("X", {PRIV: "C"}),  # Private attributes
}


def test_table_loads_every_row() -> None:
    # the transcribed edition has 460 rows; the JSON it came from re-serializes byte for byte
    assert len(ROWS) == 460
    assert len(BY_TAG) == len(ROWS), "duplicate tags"
    assert "Table E.1-1" in TABLE_EDITION


def test_every_code_is_legal() -> None:
    for row in ROWS:
        assert row.basic in BASIC_CODES, f"{row.tag} {row.name}: basic {row.basic!r}"
        for column, value in row.options.items():
            assert value in OPTION_VALUES, f"{row.tag} {row.name}: {column}={value!r}"


def test_concrete_tags_match_the_dictionary_names() -> None:
    # every concrete tag is the attribute its name says (pydicom's PS3.6 dictionary)
    for row in ROWS:
        if row.tag_int is None:
            continue
        name = re.sub(r"\(see Note \d+\)", "", row.name)
        norm = [
            re.sub(r"[^a-z0-9]", "", s.lower()) for s in (name, dictionary_description(row.tag_int))
        ]
        assert norm[0] == norm[1], f"{row.tag}: {row.name!r} is not {norm[1]!r}"


@pytest.mark.parametrize("tag", sorted(SPOT_CHECKS))
def test_spot_checks_against_the_standard(tag: str) -> None:
    basic, options = SPOT_CHECKS[tag]
    row = BY_TAG[tag]
    assert (row.basic, dict(row.options)) == (basic, options), row.name


@pytest.mark.parametrize(
    ("tag", "options", "action"),
    [
        ("(0008,0080)", BASIC, "Z"),  # X/Z/D, not Type 1 -> Z
        ("(0018,1000)", BASIC, "D"),  # X/Z/D, Type 1 in enhanced equipment -> D
        ("(0018,1000)", CAMPAIGN, "K"),  # device identity option
        ("(0008,0021)", BASIC, "X"),  # X/D -> X
        ("(0008,0023)", BASIC, "D"),  # Z/D, ContentDate -> D
        ("(0070,0084)", BASIC, "Z"),  # Z/D, ContentCreatorName -> Z
        ("(0008,0022)", BASIC, "Z"),  # X/Z -> Z
        ("(0008,1140)", BASIC, "U"),  # X/Z/U* -> keep sequence, replace UIDs
        ("(0008,0020)", CAMPAIGN, "C"),  # modified dates
        ("(0010,2110)", CAMPAIGN, "C"),  # Allergies: both enabled options say C
        ("(0010,1010)", CAMPAIGN, "K"),  # Patient's Age
        ("(0008,103E)", CAMPAIGN, "C"),  # Series Description
        ("(0008,103E)", BASIC, "X"),
    ],
)
def test_resolve_action(tag: str, options: DeidOptions, action: str) -> None:
    assert resolve_action(BY_TAG[tag], options) == action


def test_most_retaining_option_wins() -> None:
    row = ProfileRow("(0000,0000)", "synthetic", "X", {DEV: "C", PAT: "K"})
    assert resolve_action(row, CAMPAIGN) == "K"
    assert resolve_action(row, DeidOptions(retain_patient_characteristics=False)) == "C"


# --- behaviour, tag by tag ----------------------------------------------------------

KEY = bytes(range(32))
PSEUDO = Pseudonymizer(KEY)


def _base() -> bytes:
    """A small CT instance: just what an accepted image needs, plus a name to scrub."""
    ds = make_ct(patient_id="TAGTEST-PID", study_date="20240301", size=8)
    keep = {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
            "Modality", "PatientID", "PatientName", "SpecificCharacterSet", "SamplesPerPixel",
            "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
            "HighBit", "PixelRepresentation", "PixelData"}  # fmt: skip
    for elem in list(ds):
        if elem.keyword not in keep:
            del ds[elem.tag]
    return write(ds)


BASE_BYTES = _base()
TEXT = "CHEST Musterfrau"  # the base dataset's PatientName holds "Musterfrau"
VALUES: dict[str, Any] = {
    "AE": "TAGTESTAE",
    "AS": "045Y",
    "CS": "TAGTEST",
    "DA": "20240301",
    "DT": "20240301101530",
    "TM": "101530",
    "DS": "12.5",
    "IS": "42",
    "US": 7,
    "SS": -7,
    "UL": 7,
    "FL": 1.5,
    "FD": 1.5,
    "OB": b"\x01\x02",
    "OW": b"\x01\x02",
    "UI": "1.2.826.0.1.3680043.8.498.4242",
    "PN": "Tagtest^Person",
    "UR": "http://example.org/tagtest",
}
NESTED_UID = "1.2.826.0.1.3680043.8.498.7777"
SIMPLE = {row.tag for row in ROWS if row.tag_int is not None and dictionary_has_tag(row.tag_int)}


def _expected(row: ProfileRow, options: DeidOptions) -> str:
    """The action the standard's legend gives, derived here independently of table.py."""
    enabled = {
        MOD_DATES: options.retain_longitudinal_modified_dates,
        PAT: options.retain_patient_characteristics,
        DEV: options.retain_device_identity,
        DESC: options.clean_descriptors,
    }
    chosen = [row.options[c] for c, on in enabled.items() if on and c in row.options]
    if chosen:
        return max(chosen, key="XZDUCK".index)
    if row.basic in ("X/Z", "X/Z/U*"):
        return {"X/Z": "Z", "X/Z/U*": "U"}[row.basic]
    if "/" in row.basic:
        if row.keyword in TYPE1_KEYWORDS:
            return "D"
        return "X" if row.basic == "X/D" else "Z"
    return row.basic


def _item() -> Dataset:
    item = Dataset()
    item.CodeValue = "TAG"
    item.CodingSchemeDesignator = "99TEST"
    item.CodeMeaning = "tagtest"
    item.ReferencedSOPInstanceUID = NESTED_UID
    item.AccessionNumber = "ACC-NESTED"
    return item


def _value(vr: str) -> Any:
    if vr == "SQ":
        return Sequence([_item()])
    return VALUES.get(vr, TEXT)


@pytest.mark.parametrize("options", [BASIC, CAMPAIGN], ids=["basic", "campaign"])
def test_action_applied_tag_by_tag(options: DeidOptions) -> None:
    """Every concrete row of the table, one dataset each; all failures reported together."""
    failures = []
    for tag in sorted(SIMPLE):
        try:
            _check_row(BY_TAG[tag], options)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, f"{len(failures)} rows not applied as the table says:\n" + "\n".join(
        failures
    )


def _check_row(row: ProfileRow, options: DeidOptions) -> None:
    tag_int = row.tag_int
    assert tag_int is not None
    vr = dictionary_VR(tag_int)
    vr = vr.split(" or ")[0]
    ds = read(BASE_BYTES)
    original = _value(vr)
    ds[tag_int] = DataElement(tag_int, vr, original)
    # Under the campaign options the element arrives undecoded, as from a file, and the
    # output is written and read back: raw rewriting must decode to what the action says.
    # (pydicom cannot write command or file meta elements inside a dataset.)
    roundtrip = options is CAMPAIGN and tag_int >> 16 not in (0x0000, 0x0002)
    if roundtrip:
        ds = read(write(ds))
    out = Deidentifier(options, PSEUDO).deidentify(ds)
    if roundtrip:
        out = read(write(out))
    action = _expected(row, options)
    if tag_int >> 16 in (0x0000, 0x0002):
        action = "X"  # medai's rule: command and file meta elements never stay in a dataset
    where = f"{row.tag} {row.name} ({vr}), expected {action}"

    if tag_int in (0x00100010, 0x00100020):  # replaced by the patient pseudonym
        pid = original if tag_int == 0x00100020 else "TAGTEST-PID"
        assert str(out[tag_int].value) == PSEUDO.patient_pseudonym("", pid), where
        return
    if action == "C" and narrative.removes(tag_int, vr, frozenset()):
        action = "X"  # narrative text is removed under cleaning unless a campaign keeps it
    if action == "X":
        assert tag_int not in out, where
        return
    assert tag_int in out, where
    elem = out[tag_int]
    if vr == "SQ":
        items = list(elem.value)
        if action == "Z":
            assert items == [], where
        elif action == "D":
            assert len(items) == 1 and len(items[0]) == 0, where
        else:  # K, C and U keep the sequence and apply the profile inside it
            assert len(items) == 1, where
            assert items[0].CodeValue == "TAG", where
            assert items[0].ReferencedSOPInstanceUID == PSEUDO.uid(NESTED_UID), where
            assert items[0].AccessionNumber == "", where
        return
    if action == "Z":
        assert elem.is_empty, where
    elif action == "D":
        assert not elem.is_empty and elem.value != original, where
    elif action == "K":
        assert elem.value == original, where
    elif action == "U":
        assert elem.value == PSEUDO.uid(original), where
    elif action == "C":
        offset = PSEUDO.date_offset_days("", "TAGTEST-PID")
        shifted = (date(2024, 3, 1) + timedelta(days=offset)).strftime("%Y%m%d")
        if vr == "DA":
            assert elem.value == shifted, where
        elif vr == "DT":
            assert elem.value == shifted + "101530", where
        elif vr in ("LO", "LT", "SH", "ST", "UC", "UT"):
            assert elem.value == "CHEST", where  # the allow-list keeps clinical words only
        else:
            assert elem.value == original, where
    else:  # pragma: no cover - a code the legend does not define
        raise AssertionError(where)
