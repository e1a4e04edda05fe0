"""Normalized instance metadata: one spelling per body part, view and manufacturer.

Sites spell the same thing differently ("CHEST", "Chest", "THORAX", "TORAX";
"GE MEDICAL SYSTEMS", "GE Healthcare"). The tables below map each known spelling to
one canonical value; they are data, so a new spelling is one line.

Matching ignores case, accents and punctuation (``_key``). A non-empty value that no
table knows is kept as its key (upper case, single spaces), not dropped to None: the
catalog then still groups it, and a later table entry can map it. Empty or absent
values become None.
"""

from __future__ import annotations

import datetime
import unicodedata
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medai.errors import MissingAttribute

__all__ = [
    "BODY_PARTS",
    "MANUFACTURERS",
    "VIEW_POSITIONS",
    "InstanceMetadata",
    "normalize_body_part",
    "normalize_manufacturer",
    "normalize_view_position",
    "normalized_metadata",
]

# Spelling (as _key leaves it) -> DICOM defined term of Body Part Examined (PS3.16 CID 4031).
BODY_PARTS: dict[str, str] = {
    # chest, in the languages of the sites' modalities
    "CHEST": "CHEST",
    "THORAX": "CHEST",
    "TORAX": "CHEST",  # Spanish, Portuguese, Swedish (accent dropped by _key)
    "TORACE": "CHEST",  # Italian
    "BRUST": "CHEST",
    "BRUSTKORB": "CHEST",
    "BORST": "CHEST",  # Dutch
    "BORSTKAS": "CHEST",
    "POITRINE": "CHEST",
    "PECHO": "CHEST",
    "KLATKA PIERSIOWA": "CHEST",
    "LUNG": "CHEST",
    "LUNGS": "CHEST",
    "LUNGE": "CHEST",
    "CHEST PA": "CHEST",
    "CHEST AP": "CHEST",
    "CHEST LAT": "CHEST",
    "THORAX PA": "CHEST",
    "THORAX AP": "CHEST",
    "PA CHEST": "CHEST",
    "CXR": "CHEST",
    "THORAX ABDOMEN": "CHESTABDOMEN",
    "CHEST ABDOMEN": "CHESTABDOMEN",
    "CHESTABDOMEN": "CHESTABDOMEN",
    "ABDOMEN": "ABDOMEN",
    "ABD": "ABDOMEN",
    "BAUCH": "ABDOMEN",
    "ABDOMEN PELVIS": "ABDOMENPELVIS",
    "ABDOMENPELVIS": "ABDOMENPELVIS",
    "PELVIS": "PELVIS",
    "BECKEN": "PELVIS",
    "HEAD": "HEAD",
    "KOPF": "HEAD",
    "SKULL": "SKULL",
    "SCHADEL": "SKULL",
    "SCHAEDEL": "SKULL",
    "BRAIN": "BRAIN",
    "NECK": "NECK",
    "HALS": "NECK",
    "CSPINE": "CSPINE",
    "C SPINE": "CSPINE",
    "HWS": "CSPINE",
    "TSPINE": "TSPINE",
    "T SPINE": "TSPINE",
    "BWS": "TSPINE",
    "LSPINE": "LSPINE",
    "L SPINE": "LSPINE",
    "LWS": "LSPINE",
    "KNEE": "KNEE",
    "KNIE": "KNEE",
    "HAND": "HAND",
    "FOOT": "FOOT",
    "FUSS": "FOOT",
    "SHOULDER": "SHOULDER",
    "SCHULTER": "SHOULDER",
    "BREAST": "BREAST",
    "MAMMA": "BREAST",
}

# Manufacturer prefix (as _key leaves it, matched at word boundaries) -> canonical name.
# Longest prefix wins, so "GE" does not take "GENERAL ELECTRIC" but its own entry does.
MANUFACTURERS: dict[str, str] = {
    "GE": "GE",
    "GE MEDICAL SYSTEMS": "GE",
    "GE HEALTHCARE": "GE",
    "GENERAL ELECTRIC": "GE",
    "GEMS": "GE",
    "SIEMENS": "SIEMENS",
    "SIEMENS HEALTHINEERS": "SIEMENS",
    "PHILIPS": "PHILIPS",
    "PHILIPS MEDICAL SYSTEMS": "PHILIPS",
    "PHILIPS HEALTHCARE": "PHILIPS",
    "CANON": "CANON",
    "CANON MEDICAL SYSTEMS": "CANON",
    "CANON MEC": "CANON",
    "TOSHIBA": "CANON",  # Toshiba Medical became Canon Medical Systems in 2018
    "TOSHIBA MEC": "CANON",
    "AGFA": "AGFA",
    "AGFA GEVAERT": "AGFA",
    "FUJIFILM": "FUJIFILM",
    "FUJI": "FUJIFILM",
    "FUJI PHOTO FILM": "FUJIFILM",
    "CARESTREAM": "CARESTREAM",
    "CARESTREAM HEALTH": "CARESTREAM",
    "KODAK": "CARESTREAM",  # Kodak Health Group became Carestream in 2007
    "KONICA MINOLTA": "KONICA MINOLTA",
    "SAMSUNG": "SAMSUNG",
    "SAMSUNG ELECTRONICS": "SAMSUNG",
    "SHIMADZU": "SHIMADZU",
    "HITACHI": "HITACHI",
    "HOLOGIC": "HOLOGIC",
    "UNITED IMAGING": "UNITED IMAGING",
    "UIH": "UNITED IMAGING",
}

# View Position spelling (as _key leaves it) -> DICOM defined term (PS3.3 C.8.11.5.1.1),
# or LATERAL where the side is not stated.
VIEW_POSITIONS: dict[str, str] = {
    "PA": "PA",
    "P A": "PA",
    "POSTERO ANTERIOR": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "A P": "AP",
    "ANTERO POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP",
    "LL": "LL",
    "LEFT LATERAL": "LL",
    "LAT LEFT": "LL",
    "RL": "RL",
    "RIGHT LATERAL": "RL",
    "LAT RIGHT": "RL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
    "RLD": "RLD",
    "LLD": "LLD",
    "RLO": "RLO",
    "LLO": "LLO",
}

_TRANSFER_SYNTAX_BY_ENCODING = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


@dataclass(frozen=True)
class InstanceMetadata:
    """What the catalog keeps about one (de-identified) instance."""

    sop_class_uid: str
    modality: str | None
    body_part: str | None
    view_position: str | None
    manufacturer: str | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    transfer_syntax_uid: str
    series_number: int | None
    study_date: datetime.date | None


def _key(value: object) -> str | None:
    """Upper case, accents dropped, punctuation to spaces, spaces collapsed; None if empty."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    if value is None:
        return None
    text = unicodedata.normalize("NFKD", str(value))
    text = "".join(c for c in text if not unicodedata.combining(c)).upper()
    text = "".join(c if c.isalnum() else " " for c in text)
    return " ".join(text.split()) or None


def normalize_body_part(value: object) -> str | None:
    """Map a Body Part Examined spelling to its defined term (see the module docstring)."""
    key = _key(value)
    if key is None:
        return None
    return BODY_PARTS.get(key, BODY_PARTS.get(key.replace(" ", ""), key))


def normalize_manufacturer(value: object) -> str | None:
    """Map a Manufacturer string to a canonical vendor name (see the module docstring)."""
    key = _key(value)
    if key is None:
        return None
    words = key.split()
    for count in range(len(words), 0, -1):  # longest prefix first
        canonical = MANUFACTURERS.get(" ".join(words[:count]))
        if canonical is not None:
            return canonical
    return key


def normalize_view_position(value: object) -> str | None:
    """Map a View Position spelling to its defined term (see the module docstring)."""
    key = _key(value)
    if key is None:
        return None
    return VIEW_POSITIONS.get(key, key)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(value: Any) -> datetime.date | None:
    text = str(value or "").strip()
    try:
        return datetime.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if value:
        return str(value)
    encoding = _TRANSFER_SYNTAX_BY_ENCODING.get(ds.original_encoding)  # type: ignore[arg-type]
    if encoding is None:
        raise MissingAttribute("the transfer syntax is neither stated nor known from reading")
    return str(encoding)


def normalized_metadata(ds: Dataset) -> InstanceMetadata:
    """The catalog's metadata of ``ds``, with vendor spellings normalized.

    ``study_date`` is Study Date, or where that is empty the Series, Acquisition or
    Content Date (in that order); malformed numbers and dates become None.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A parsed (and normally de-identified) instance.

    Returns
    -------
    InstanceMetadata

    Raises
    ------
    MissingAttribute
        Without SOP Class UID, or with no way to tell the transfer syntax.
    """
    sop_class_uid = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop_class_uid:
        raise MissingAttribute("SOPClassUID is missing or empty")
    study_date = None
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        study_date = _date(ds.get(keyword))
        if study_date is not None:
            break
    return InstanceMetadata(
        sop_class_uid=sop_class_uid,
        modality=_key(ds.get("Modality")),
        body_part=normalize_body_part(ds.get("BodyPartExamined")),
        view_position=normalize_view_position(ds.get("ViewPosition")),
        manufacturer=normalize_manufacturer(ds.get("Manufacturer")),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        number_of_frames=max(_int(ds.get("NumberOfFrames")) or 1, 1),
        transfer_syntax_uid=_transfer_syntax(ds),
        series_number=_int(ds.get("SeriesNumber")),
        study_date=study_date,
    )
