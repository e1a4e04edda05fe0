"""Encode a dataset as a DICOM Part 10 file, fast for elements still as read from the file.

pydicom's ``dcmwrite`` spends most of its time on per-element bookkeeping. An
element that was never decoded (a ``RawDataElement``) can be written back as
its tag, VR, length and the very bytes it was read with; everything else goes
through pydicom's own element writer. The output is byte-identical to
``pydicom.dcmwrite(..., enforce_file_format=True)`` with a zeroed preamble
(tested), so the content address of a file does not depend on which path wrote it.
"""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

__all__ = ["encode_part10"]

# A preamble can carry data (e.g. a TIFF header in dual-personality files): never keep it.
_PREAMBLE = b"\x00" * 128 + b"DICM"
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = BaseTag(0x7FE00010)
_GROUP_LENGTH = BaseTag(0x00020000)
_SOP_CLASS_UID = BaseTag(0x00080016)
_SOP_INSTANCE_UID = BaseTag(0x00080018)
_REQUIRED_META = (
    "FileMetaInformationVersion",
    "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
)
_SEQUENCE_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_TAG = struct.Struct("<HH")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


def encode_part10(ds: Dataset) -> bytes:
    """The Part 10 bytes of ``ds`` (preamble zeroed, file meta validated and written).

    Parameters
    ----------
    ds
        A dataset with ``file_meta`` holding its TransferSyntaxUID and the
        Media Storage SOP Class/Instance UIDs matching the dataset.

    Returns
    -------
    bytes
        What ``pydicom.dcmwrite(buffer, ds, enforce_file_format=True)`` writes
        for ``ds`` with a zero preamble.
    """
    ds.preamble = _PREAMBLE[:128]
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    if (
        syntax == DeflatedExplicitVRLittleEndian
        or not little
        or ds.original_encoding != (implicit, little)
        or ds.original_character_set != ds._character_set
        or ds.file_meta.get("MediaStorageSOPInstanceUID") != _uid_value(ds, _SOP_INSTANCE_UID)
        or ds.file_meta.get("MediaStorageSOPClassUID") != _uid_value(ds, _SOP_CLASS_UID)
    ):
        # Re-encoding, deflate or meta fix-ups: pydicom's writer does all of it.
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    chunks = [_PREAMBLE, _file_meta_bytes(ds.file_meta)]
    if "PixelData" in ds and not isinstance(ds._dict[_PIXEL_DATA], RawDataElement):
        ds["PixelData"].is_undefined_length = syntax.is_compressed
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    elements = ds._dict
    for tag in sorted(elements):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = elements[tag]
        encoded = _raw_bytes(elem, implicit, syntax) if isinstance(elem, RawDataElement) else None
        if encoded is None:
            # Decoded or changed elements: pydicom's own element writer.
            element = DicomBytesIO()
            element.is_implicit_VR, element.is_little_endian = implicit, little
            write_data_element(element, ds.get_item(tag), encodings)
            encoded = element.getvalue()
        chunks.append(encoded)
    return b"".join(chunks)


def _uid_value(ds: Dataset, tag: BaseTag) -> str | None:
    """A UI value without decoding its element (decoding would cost the fast path)."""
    elem = ds._dict.get(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        return (elem.value or b"").rstrip(b"\x00 ").decode("ascii", "replace")
    return str(elem.value)


def _file_meta_bytes(meta: FileMetaDataset) -> bytes:
    """Group 0002 as ``write_file_meta_info(..., enforce_standard=True)`` writes it.

    pydicom deep-copies the meta on every call; here the few elements are written
    directly, and pydicom's own validation runs only when something it would add
    or reject is missing.
    """
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    if any(not meta.get(keyword) for keyword in _REQUIRED_META):
        validate_file_meta(meta, enforce_standard=True)  # adds defaults, or raises
        write_file_meta_info(buffer, meta, enforce_standard=True)
        return bytes(buffer.getvalue())
    chunks: list[bytes] = []
    for tag in sorted(meta._dict):
        if tag == _GROUP_LENGTH:
            continue
        elem = meta[tag]
        encoded_elem = _meta_element_bytes(tag, elem.VR, elem.value)
        if encoded_elem is None:
            single = DicomBytesIO()
            single.is_implicit_VR, single.is_little_endian = False, True
            write_data_element(single, elem)
            encoded_elem = bytes(single.getvalue())
        chunks.append(encoded_elem)
    encoded = b"".join(chunks)
    return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(encoded)) + encoded


# The file meta of every stored instance is the same handful of UI, SH/AE and OB values:
# written directly they cost a tenth of pydicom's general element writer on the ingest path.
_META_TEXT_PADDING = {"UI": b"\x00", "SH": b" ", "AE": b" ", "CS": b" ", "LO": b" "}


def _meta_element_bytes(tag: int, vr: str, value: object) -> bytes | None:
    """One explicit-VR little-endian group 0002 element; None: pydicom's writer decides."""
    if vr in _META_TEXT_PADDING and isinstance(value, str) and value.isascii():
        data = value.encode("ascii")
        if len(data) % 2:
            data += _META_TEXT_PADDING[vr]
        return _TAG.pack(0x0002, tag & 0xFFFF) + vr.encode() + _US.pack(len(data)) + data
    if vr == "OB" and isinstance(value, bytes):
        data = value + b"\x00" if len(value) % 2 else value
        return _TAG.pack(0x0002, tag & 0xFFFF) + b"OB\x00\x00" + _UL.pack(len(data)) + data
    return None


def _raw_bytes(elem: RawDataElement, implicit: bool, syntax: UID) -> bytes | None:
    """``elem`` encoded exactly as pydicom would; None when the fast path does not apply."""
    value = elem.value or b""
    undefined = elem.length == _UNDEFINED
    vr = elem.VR
    if undefined and elem.tag == 0x7FE00010 and not syntax.is_compressed:
        return None  # let pydicom raise its clear error
    if not implicit and (vr is None or len(vr) != 2):
        return None
    if not implicit and vr not in _LONG_VRS and not undefined and len(value) > 0xFFFF:
        return None  # pydicom rewrites the VR as UN (with a warning)
    tag = _TAG.pack(elem.tag >> 16, elem.tag & 0xFFFF)
    length = _UNDEFINED if undefined else len(value)
    if implicit:
        header = tag + _UL.pack(length)
    elif vr in _LONG_VRS or undefined:
        assert vr is not None
        reserved = b"\x00\x00" if vr in _LONG_VRS else b""
        header = tag + vr.encode("ascii") + reserved + _UL.pack(length)
    else:
        assert vr is not None
        header = tag + vr.encode("ascii") + _US.pack(length)
    trailer = _SEQUENCE_DELIMITER if undefined else b""
    return b"".join((header, value, trailer))
