"""A steward's view of a quarantined file's header, with every possibly identifying value removed.

A quarantined file is raw: it still holds the patient's name, IDs, dates and UIDs. To judge
why it was refused, a data steward needs its structure, not those values. So the view lists
each data element's tag, keyword, VR and length, and shows a value only when all of these
hold (an allow-list, so an attribute nobody thought of stays hidden):

* the tag is public (private tags may hold anything) and not in PS3.15 Annex E Table
  E.1-1 (:func:`medai.collection.deid.table.load_table`, the attributes the profile
  removes, blanks, replaces or cleans);
* its VR holds a code or a number (CS, IS, DS, US, SS, UL, SL, FL, FD, ...), never free
  text, a name, a date or a time; or it is a UID that the DICOM standard itself
  registers (a SOP class, a transfer syntax), which identifies nothing but a kind of file.

A file that is not DICOM at all (often the very reason it was quarantined) is described by
its size and by the kind of file its first bytes announce (PDF, ZIP, JPEG, text, ...),
never by the bytes themselves. Reading is bounded: deflated data sets are inflated only
as far as :func:`medai.dicom.read.readable_head` allows, nesting and element counts are
capped, and any exception from the DICOM library is reported by its type only (its text
may quote values from the file).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from medai.collection.deid.table import load_table
from medai.dicom.read import readable_head

__all__ = [
    "HeaderElement",
    "HeaderView",
    "MAX_ELEMENTS",
    "describe_raw",
    "is_shown",
]

logger = logging.getLogger(__name__)

MAX_ELEMENTS: Final = 2000
"""Elements listed at most (a hostile file may hold millions)."""
_MAX_DEPTH: Final = 6
_MAX_VALUE_CHARS: Final = 80
# Codes and numbers only: text, names, dates, times, ages and byte data are never shown.
_SAFE_VRS: Final = frozenset({"CS", "IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
# Groups of repeating elements (curves, overlays) that Annex E names by a wildcard.
_WILDCARD_GROUPS: Final = (0x5000, 0x6000)
# File signatures a steward may be told about (the kind, never the bytes themselves).
_SIGNATURES: Final = (
    (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"GIF8", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"BM", "BMP image"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!", "RAR archive"),
    (b"<?xml", "XML document"),
    (b"{\\rtf", "RTF document"),
    (b"\xd0\xcf\x11\xe0", "Microsoft Office document"),
)


@dataclass(frozen=True)
class HeaderElement:
    """One data element of a quarantined file, as a steward may see it."""

    tag: str  # "(0008,0060)"
    keyword: str  # "" for a private or unknown tag
    vr: str
    length: int | None  # bytes as encoded; None when the file does not say (undefined length)
    value: str | None  # None: withheld (possibly identifying) or not a value (a sequence)
    depth: int  # 0 for the top level, 1 inside a sequence item, ...

    @property
    def withheld(self) -> bool:
        """Whether the element has a value that is not shown."""
        return self.value is None and self.vr != "SQ"


@dataclass(frozen=True)
class HeaderView:
    """What a steward may see of one quarantined file."""

    byte_size: int
    kind: str  # "DICOM", "DICOM (raw data set)", or what the first bytes announce
    elements: tuple[HeaderElement, ...]
    # Why the header could not be read whole (an exception's type, never its text).
    read_problem: str | None = None
    truncated: bool = False  # more than MAX_ELEMENTS elements

    @property
    def is_dicom(self) -> bool:
        return self.kind.startswith("DICOM")


@lru_cache(maxsize=1)
def _annex_e_tags() -> frozenset[int]:
    return frozenset(row.tag_int for row in load_table() if row.tag_int is not None)


def _standard_uid(value: str) -> bool:
    """Whether ``value`` is a UID the DICOM standard registers (a class, a syntax)."""
    uid = UID(value)
    return uid.is_valid and not uid.is_private and uid.name != str(uid)


def is_shown(tag: int, vr: str, value: object) -> bool:
    """Whether the value of element ``tag`` (of ``vr``) may be shown to a steward.

    See the module docstring for the rule.
    """
    tag = Tag(tag)
    if tag.is_private or tag.element == 0 or tag in _annex_e_tags():
        return False
    if tag.group & 0xFF00 in _WILDCARD_GROUPS:
        return False
    if vr == "UI":
        return isinstance(value, str) and _standard_uid(value)
    return vr in _SAFE_VRS


def describe_raw(raw: bytes) -> HeaderView:
    """The steward's view of ``raw`` (a quarantined file): never raises for bad input."""
    kind = _kind(raw)
    if not kind.startswith("DICOM"):
        return HeaderView(len(raw), kind, ())
    # pydicom's warnings quote values from the file (an invalid UID, a bad date): muted.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _describe_dicom(raw, kind)


def _describe_dicom(raw: bytes, kind: str) -> HeaderView:
    head = readable_head(raw)
    try:
        ds = pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)
    except Exception as exc:  # hostile files break pydicom in many ways; its text may quote values
        return HeaderView(len(raw), kind, (), read_problem=type(exc).__name__)
    walker = _Walker()
    try:
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            walker.walk(meta, 0)
        walker.walk(ds, 0)
    except _TooMany:
        pass
    except Exception as exc:  # a value deferred by pydicom failed to parse mid-way
        walker.problem = type(exc).__name__
    if not walker.elements and walker.problem is None:
        return HeaderView(len(raw), "not DICOM (no data element could be read)", ())
    return HeaderView(
        len(raw), kind, tuple(walker.elements), walker.problem, truncated=walker.truncated
    )


def _kind(raw: bytes) -> str:
    if not raw:
        return "empty file"
    if raw[128:132] == b"DICM" or raw[:4] == b"DICM":
        return "DICOM"
    for signature, name in _SIGNATURES:
        if raw.startswith(signature):
            return name
    if raw[:2] in (b"\x02\x00", b"\x08\x00"):  # group 0002 or 0008: a data set without meta
        return "DICOM (raw data set)"
    sample = raw[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample's end is still text.
        text = sample[: exc.start].decode("utf-8") if exc.start > len(sample) - 4 else ""
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "text"
    return "unknown binary data"


class _TooMany(Exception):
    """The element cap was reached."""


class _Walker:
    def __init__(self) -> None:
        self.elements: list[HeaderElement] = []
        self.problem: str | None = None
        self.truncated = False

    def walk(self, ds: Dataset, depth: int, *, withhold: bool = False) -> None:
        for tag in sorted(ds.keys()):
            if len(self.elements) >= MAX_ELEMENTS:
                self.truncated = True
                raise _TooMany
            self._element(ds, BaseTag(tag), depth, withhold)

    def _element(self, ds: Dataset, tag: BaseTag, depth: int, withhold: bool) -> None:
        raw = ds.get_item(tag)
        length: int | None = None
        vr = ""
        if isinstance(raw, RawDataElement):
            length = None if raw.length == 0xFFFFFFFF else raw.length
            vr = str(raw.VR or "")
        if not vr:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        try:
            elem = ds[tag]
        except Exception as exc:  # a damaged value: list the element, withhold the value
            self.problem = self.problem or type(exc).__name__
            self._add(tag, vr, length, None, depth)
            return
        vr = str(elem.VR or vr)
        if length is None and vr != "SQ" and isinstance(elem.value, bytes | str):
            length = len(elem.value)
        if vr == "SQ":
            self._add(tag, vr, length, None, depth)
            if depth + 1 < _MAX_DEPTH:
                # Inside a sequence the profile removes or replaces, every value is withheld.
                inner = withhold or not is_shown(tag, "CS", None)
                for item in elem.value or ():
                    self.walk(item, depth + 1, withhold=inner)
            return
        value = elem.value
        shown = None if withhold or not is_shown(tag, vr, value) else _format(value, vr)
        self._add(tag, vr, length, shown, depth)

    def _add(
        self, tag: BaseTag, vr: str, length: int | None, value: str | None, depth: int
    ) -> None:
        keyword = "" if tag.is_private else keyword_for_tag(tag)
        name = f"({tag.group:04X},{tag.element:04X})"
        self.elements.append(HeaderElement(name, keyword, vr, length, value, depth))


def _format(value: object, vr: str) -> str:
    if isinstance(value, list | tuple | MultiValue):
        text = "\\".join(str(v) for v in value)
    elif vr == "UI":
        text = f"{value} ({UID(str(value)).name})"
    else:
        text = str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"
