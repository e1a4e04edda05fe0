"""PS3.15 Table E.1-1 as data: loads the CSV and resolves each tag's action for a set of options."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from pydicom import Dataset
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

from medai.collection.deid.iod_requirements import (
    REQUIRED_DATES,
    REQUIRED_TEXT,
    UNSHIFTED_DATES,
    Requirement,
)
from medai.collection.deid.vocabulary import load_vocabulary

__all__ = [
    "ACTIONS",
    "BASIC_CODES",
    "OPTION_COLUMNS",
    "SAFE_TEXT_KEYWORDS",
    "TABLE_EDITION",
    "TABLE_EDITION_SHORT",
    "TYPE1_KEYWORDS",
    "ActionTable",
    "DeidOptions",
    "ProfileRow",
    "action_table",
    "identifying_tags",
    "identity_elements",
    "load_table",
    "method_codes",
    "method_description",
    "resolve_action",
]

TABLE_EDITION = (
    "DICOM PS3.15 Annex E Table E.1-1, as published in the DICOM Standard, current edition, "
    "transcribed 2026-11 from the machine-readable PS3.15 (innolitics/dicom-standard "
    "confidentiality_profile_attributes.json, commit 0d01bf11); that source names no edition"
)
TABLE_EDITION_SHORT = "Table E.1-1 current edition, transcribed 2026-11"

ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U"})
"""Resolved actions: dummy, zero-length, remove, keep, clean, replace UID."""

BASIC_CODES = frozenset(ACTIONS | {"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
"""Every code the standard uses in the Basic Profile column."""

OPTION_COLUMNS: Mapping[str, str] = {
    "retain_longitudinal_modified_dates": "retain_long_modified_dates",
    "retain_patient_characteristics": "retain_patient_characteristics",
    "retain_device_identity": "retain_device_identity",
    "clean_descriptors": "clean_descriptors",
}
"""DeidOptions field -> CSV column of the option it switches on."""

# CID 7050 De-identification Methods (scheme DCM).
_CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
_OPTION_CODES = (
    ("clean_descriptors", "113105", "Clean Descriptors Option"),
    (
        "retain_longitudinal_modified_dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    ("retain_patient_characteristics", "113108", "Retain Patient Characteristics Option"),
    ("retain_device_identity", "113109", "Retain Device Identity Option"),
)
_CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")

# An option that keeps more beats one that keeps less when two enabled options disagree.
_RANK = {"K": 5, "C": 4, "U": 3, "D": 2, "Z": 1, "X": 0}

TYPE1_KEYWORDS = frozenset(
    {"ContentDate", "ContentTime", "AcquisitionDateTime", "DeviceSerialNumber"}
)
"""Attributes of Z/D, X/D and X/Z/D rows that get a dummy (D) rather than Z or X.

These four are Type 1 (or 1C, required for original images) in the enhanced multi-frame
image IODs medai accepts (Multi-frame Functional Groups, Enhanced CT/MR Image and Enhanced
General Equipment modules); a dummy is conformant wherever Z or X would be. Every other
combined row is Type 2 or 3 in the image IODs medai accepts, so Z (Type 2) or X is used.
Under the campaign options the dates become C (shifted) and DeviceSerialNumber K anyway.
"""

SAFE_TEXT_KEYWORDS = frozenset(
    {
        # equipment make and software: needed to normalize vendor variation, not personal
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        # acquisition and display parameters written by the modality, not by people
        "ConvolutionKernel",
        "RescaleType",
        "WindowCenterWidthExplanation",
        "ReceiveCoilName",
        "TransmitCoilName",
        # coded entries (anatomy, view, procedure): values from coding schemes
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
    }
)
"""Text attributes outside Table E.1-1 that are kept; any other text attribute is removed,
except those an IOD requires (``iod_requirements.REQUIRED_TEXT``: kept, cleaned or emptied)."""

_TEXT_VRS = frozenset({"AE", "AS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS = frozenset({"DA", "DT"})


@dataclass(frozen=True)
class DeidOptions:
    """Campaign de-identification options (PS3.15 E.3); the four options are on by default.

    ``safe_private_tags`` lists private elements a data steward has judged safe, as
    (private creator, element & 0xFF); every other private element is removed.
    """

    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    retain_device_identity: bool = True
    clean_descriptors: bool = True
    safe_private_tags: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    # Clean Descriptors (see descriptors.py, narrative.py): the campaign's own clinical
    # terms, and the narrative attributes (keywords) allow-list cleaned instead of removed.
    extra_vocabulary: frozenset[str] = field(default_factory=frozenset)
    keep_narrative: frozenset[str] = field(default_factory=frozenset)

    def enabled_columns(self) -> tuple[str, ...]:
        """The CSV option columns switched on by these options."""
        return tuple(col for name, col in OPTION_COLUMNS.items() if getattr(self, name))


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1."""

    tag: str
    name: str
    basic: str
    options: Mapping[str, str]

    @property
    def tag_int(self) -> int | None:
        """The tag as an int, or None for wildcard rows such as (60XX,3000)."""
        digits = self.tag.strip("()").replace(",", "")
        if len(digits) != 8:
            return None
        try:
            return int(digits, 16)
        except ValueError:
            return None

    @property
    def keyword(self) -> str:
        """The DICOM keyword, or "" for wildcard rows."""
        tag = self.tag_int
        return keyword_for_tag(tag) if tag is not None else ""


@lru_cache(maxsize=1)
def load_table() -> tuple[ProfileRow, ...]:
    """All rows of Table E.1-1, read from ``annex_e_table.csv`` (comment lines start with #).

    Returns
    -------
    tuple of ProfileRow
        In the standard's order.
    """
    text = resources.files(__package__).joinpath("annex_e_table.csv").read_text("utf-8")
    lines = (line for line in io.StringIO(text) if not line.startswith("#"))
    rows = []
    for record in csv.DictReader(lines):
        tag = record.pop("tag")
        name = record.pop("keyword_or_name")
        basic = record.pop("basic")
        opts = {col: value for col, value in record.items() if value}
        rows.append(ProfileRow(tag=tag, name=name, basic=basic, options=opts))
    return tuple(rows)


def resolve_action(row: ProfileRow, options: DeidOptions) -> str:
    """The single action (one of :data:`ACTIONS`) for ``row`` under ``options``.

    An enabled option's entry replaces the basic action; of several enabled options the
    most retaining wins (K over C). Combined basic codes: X/Z -> Z; X/Z/U* -> U (the
    sequence stays and its UIDs are replaced); Z/D, X/D, X/Z/D -> D for
    :data:`TYPE1_KEYWORDS`, otherwise Z, X and Z respectively.

    Parameters
    ----------
    row
        A table row.
    options
        The campaign options.

    Returns
    -------
    str
        "D", "Z", "X", "K", "C" or "U".
    """
    chosen = [row.options[col] for col in options.enabled_columns() if col in row.options]
    if chosen:
        return max(chosen, key=_RANK.__getitem__)
    basic = row.basic
    if basic in ACTIONS:
        return basic
    if basic == "X/Z":
        return "Z"
    if basic == "X/Z/U*":
        return "U"
    type1 = row.keyword in TYPE1_KEYWORDS
    if basic == "X/D":
        return "D" if type1 else "X"
    if basic in ("Z/D", "X/Z/D"):
        return "D" if type1 else "Z"
    raise ValueError(f"unknown action code {basic!r} for {row.tag} in Table E.1-1")


class ActionTable:
    """Actions precomputed for one set of options, looked up by tag int.

    ``actions`` holds every concrete row; wildcard rows become (mask, value, action);
    attributes outside the table resolve by VR (see :meth:`untabled`), cached per tag.
    Codes beyond :data:`ACTIONS`: "u" = keep a registered UID, replace any other;
    "p" = private element (kept only if listed as safe).
    """

    def __init__(self, options: DeidOptions) -> None:
        self.options = options
        self.actions: dict[int, str] = {}
        self.wildcards: list[tuple[int, int, str]] = []
        for row in load_table():
            action = resolve_action(row, options)
            tag = row.tag_int
            if tag is not None and tag >> 16 in (0x0000, 0x0002):
                # Command (0000) and file meta (0002) elements never belong in a stored
                # dataset (pydicom refuses to write them there); file meta is rebuilt.
                self.actions[tag] = "X"
            elif tag is not None:
                self.actions[tag] = action
            elif row.tag.upper().startswith("(GGGG"):
                continue  # private attributes: handled by the "p" path
            else:
                mask, value = _wildcard(row.tag)
                self.wildcards.append((mask, value, action))
        # The whole Overlay Plane group goes (curves already do, as (50XX,XXXX)): without
        # its data the remaining numbers (rows, origin, bit position) describe nothing.
        self.wildcards.append((0xFF010000, 0x60000000, "X"))
        self._untabled: dict[tuple[int, str], str] = {}

    def untabled(self, tag: int, vr: str) -> str:
        """Action for an element with no concrete row (private, wildcard or outside the table)."""
        key = (tag, vr)
        action = self._untabled.get(key)
        if action is None:
            action = self._resolve_untabled(tag, vr)
            self._untabled[key] = action
        return action

    def _resolve_untabled(self, tag: int, vr: str) -> str:
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 1:
            return "p"
        for mask, value, action in self.wildcards:
            if tag & mask == value:
                return action
        if group in (0x0000, 0x0002, 0xFFFA, 0xFFFC) or elem == 0:
            return "X"  # command group, stray file meta, signatures, padding, group lengths
        if vr == "SQ":
            return "K"  # walked: its items follow the same rules
        if vr == "UI":
            return "u"
        if vr in _DATE_VRS:
            keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
            if keyword in UNSHIFTED_DATES:
                return "K"  # a version of a coding resource: about no one
            if self.options.retain_longitudinal_modified_dates:
                return "C"  # any other date may be about the procedure: shifted
            required = _REQUIRED_DATES.get(keyword)
            return _emptied_or_dummy(required) if required is not None else "X"
        if vr == "TM":
            return "K" if self.options.retain_longitudinal_modified_dates else "X"
        if vr in _TEXT_VRS:
            keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
            if keyword in SAFE_TEXT_KEYWORDS:
                return "K"
            required = _REQUIRED_TEXT.get(keyword)
            if required is None:
                return "X"  # unknown text could carry PHI: only reviewed exceptions stay
            if required.treatment == "keep":
                return "K"
            return "C" if self.options.clean_descriptors else _emptied_or_dummy(required)
        if vr == "UN" or not vr:
            return "X"  # unknown content: cannot prove it holds no text
        return "K"  # numbers, codes (CS), attribute tags, bulk binary data


_REQUIRED_TEXT = {r.keyword: r for r in REQUIRED_TEXT}
_REQUIRED_DATES = {r.keyword: r for r in REQUIRED_DATES}


def _emptied_or_dummy(required: Requirement) -> str:
    """What an IOD-required attribute becomes when its value cannot stay: D (Type 1) or Z."""
    return "D" if required.type1 else "Z"


@lru_cache(maxsize=16)
def action_table(options: DeidOptions) -> ActionTable:
    """The (cached) :class:`ActionTable` for ``options``."""
    return ActionTable(options)


def identifying_tags() -> frozenset[int]:
    """Text attributes the table removes, blanks or dummies and no option cleans: the
    values that the "C" cleaning of descriptors scrubs from free text."""
    return _identifying_tags()


@lru_cache(maxsize=1)
def _identifying_tags() -> frozenset[int]:
    tags = set()
    for row in load_table():
        tag = row.tag_int
        if tag is None or row.basic in ("K", "U", "X/Z/U*") or "C" in row.options.values():
            continue  # kept, replaced, or itself cleaned (a descriptor): not an identifier
        if dictionary_VR(tag) in _TEXT_VRS:
            tags.add(tag)
    return frozenset(tags)


def method_codes(options: DeidOptions) -> list[tuple[str, str]]:
    """CID 7050 (code value, meaning) pairs that ``options`` claim, sorted by code.

    Clean Graphics (113103) is never claimed: overlays and curves are simply removed,
    which the Basic Profile itself requires.
    """
    codes = [_CODE_BASIC]
    codes += [(code, meaning) for name, code, meaning in _OPTION_CODES if getattr(options, name)]
    if options.safe_private_tags:
        codes.append(_CODE_SAFE_PRIVATE)
    return sorted(codes)


def method_description(codes: list[tuple[str, str]]) -> list[str]:
    """DeidentificationMethod values (LO, <= 64 characters each): profile, options, table."""
    options = [meaning for code, meaning in codes if code != _CODE_BASIC[0]]
    profile = "DICOM PS3.15 E.1-1 Basic Application Confidentiality Profile"
    return [profile, *options, TABLE_EDITION_SHORT]


def identity_elements(options: DeidOptions) -> list[DataElement]:
    """PatientIdentityRemoved, DeidentificationMethod, its code sequence (CID 7050) and
    LongitudinalTemporalInformationModified, as set on every de-identified instance."""
    codes = method_codes(options)
    method = method_description(codes)
    if options.clean_descriptors:
        # Which vocabulary the cleaning kept words from (e.g. "en-1 vi-1"): LO, <= 64.
        method.append(f"Vocabulary {load_vocabulary(options.extra_vocabulary).version}"[:64])
    items = []
    for code, meaning in codes:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    temporal = "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"
    return [
        DataElement(0x00120062, "CS", "YES"),
        DataElement(0x00120063, "LO", list(method)),
        DataElement(0x00120064, "SQ", Sequence(items)),
        DataElement(0x00280303, "CS", temporal),
    ]


def _wildcard(tag: str) -> tuple[int, int]:
    digits = tag.strip("()").replace(",", "").upper()
    mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
    value = int(digits.replace("X", "0"), 16)
    return mask, value
