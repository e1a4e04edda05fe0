"""Parse and validate one offered DICOM instance from bytes (strict, tolerant when reading)."""

from __future__ import annotations

import functools
import io
import re
import struct
import threading
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medai.dicom.inflate import DEFAULT_MAX_RATIO, inflate_limit, inflate_raw_deflate
from medai.errors import (
    MedaiError,
    MissingAttribute,
    NotDicom,
    TooLarge,
    TruncatedDicom,
    UndecodableTransferSyntax,
)

__all__ = ["HEAD_BYTES", "REQUIRED_UIDS", "parse_instance", "readable_head", "take_checked_frame"]

REQUIRED_UIDS: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_UID_TAGS: Final = (_SOP_CLASS, _SOP_INSTANCE, 0x0020000D, 0x0020000E)
_SAMPLES_PER_PIXEL, _PHOTOMETRIC, _NUMBER_OF_FRAMES = 0x00280002, 0x00280004, 0x00280008
_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
_FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA, _PIXEL_DATA = 0x7FE00008, 0x7FE00009, 0x7FE00010
_UNDEFINED: Final = 0xFFFFFFFF

# Deflate applies to the whole data set after the file meta information (PS3.5 A.5).
_DEFLATED: Final = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
)
_NATIVE: Final = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, "1.2.840.10008.1.2.1.99"}
)
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# The sequence delimitation item, little and big endian.
_SEQUENCE_DELIMITERS: Final = (b"\xfe\xff\xdd\xe0" + bytes(4), b"\xff\xfe\xe0\xdd" + bytes(4))
# A raw data set (no preamble, no file meta) must start with a group 0x0008 element:
# every composite instance has (0008,0016) and lower groups are not part of a data set.
_RAW_START: Final = (b"\x08\x00", b"\x00\x08")
_META_HEADER: Final = struct.Struct("<2xH2sH")
_U32: Final = struct.Struct("<L")
_TRANSFER_SYNTAX_UI: Final = b"\x02\x00\x10\x00UI"
HEAD_BYTES: Final = 1024 * 1024  # enough for the leading elements of any real data set
_META_SEARCH: Final = 1024  # the transfer syntax lies in the first few hundred bytes
_UID_PATTERN: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UIDS_PATTERN: Final = re.compile(r"\\".join([_UID_PATTERN.pattern] * len(_UID_TAGS)))
# What the kept first frames (see take_checked_frame) may hold at most, all together.
KEPT_FRAMES_BYTES: Final = 64 * 1024 * 1024
# What a frame decodes to depends on these as well as on the pixel data.
_LAYOUT: Final = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
)


def _too_large_element(length: int, max_bytes: int) -> TooLarge:
    return TooLarge(
        f"a data element declares a length of {length} bytes, more than the "
        f"{max_bytes}-byte limit for a whole instance: the file is corrupt or hostile"
    )


def _short_value(length: int, max_bytes: int) -> TooLarge | TruncatedDicom:
    # Beyond the instance limit the length cannot be genuine; below it the file was cut.
    if length > max_bytes:
        return _too_large_element(length, max_bytes)
    return TruncatedDicom("the file ends inside a data element: it was cut short")


def _file_meta_end(data: bytes, start: int, max_bytes: int) -> tuple[int, str | None]:
    """Offset just past the (0002,eeee) elements from ``start``, and the transfer syntax.

    The group is always Explicit VR Little Endian; a few writers use implicit VR, which
    is recognised by a VR that is not two capital letters (as pydicom does).
    """
    position, transfer_syntax, size = start, None, len(data)
    while position + 8 <= size and data[position : position + 2] == b"\x02\x00":
        element, vr, short_length = _META_HEADER.unpack_from(data, position)
        if not (b"AA" <= vr <= b"ZZ"):
            length, header = _U32.unpack_from(data, position + 4)[0], 8
        elif vr in _LONG_VRS:
            if position + 12 > size:
                raise TruncatedDicom("the file ends inside its file meta information")
            length, header = _U32.unpack_from(data, position + 8)[0], 12
        else:
            length, header = short_length, 8
        if length == _UNDEFINED or position + header + length > size:
            if length != _UNDEFINED and length > max_bytes:
                raise _too_large_element(length, max_bytes)
            raise TruncatedDicom("the file ends inside its file meta information")
        if element == 0x0010:
            value = data[position + header : position + header + length]
            transfer_syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
        position += header + length
    if position < size and size - position < 8 and data[position : position + 2] == b"\x02\x00":
        raise TruncatedDicom("the file ends inside its file meta information")
    return position, transfer_syntax


def _peek_transfer_syntax(data: bytes, start: int) -> str | None:
    """The transfer syntax of a file whose meta information starts at ``start``, or None.

    A search for the element's header, instead of a walk over the group, keeps the
    common case cheap; the walk runs where this finds nothing, or a deflated syntax.
    """
    if data[start : start + 2] != b"\x02\x00":
        return None
    found = data.find(_TRANSFER_SYNTAX_UI, start, start + _META_SEARCH)
    if found < 0:
        return None
    end = found + 8 + int.from_bytes(data[found + 6 : found + 8], "little")
    if end > len(data):
        return None  # cut inside the value: the walk reports it
    return data[found + 8 : end].rstrip(b"\x00 ").decode("ascii", "replace")


def _inflate(payload: bytes, max_bytes: int, max_ratio: float) -> bytes:
    limit = inflate_limit(len(payload), max_bytes=max_bytes, max_ratio=max_ratio)
    try:
        # Streamed and bounded, so a deflate bomb costs at most ``limit`` of memory.
        return inflate_raw_deflate(payload, limit)
    except zlib.error:
        raise TruncatedDicom("the deflated data set is damaged and cannot be inflated") from None
    except EOFError:
        raise TruncatedDicom("the deflated data set ends early: the file was cut short") from None


def _read(buffer: bytes) -> FileDataset:
    try:
        return dcmread(io.BytesIO(buffer), force=True)
    except (EOFError, OSError, struct.error):
        # pydicom raises these where a value, an item or a delimiter is missing at the end.
        raise TruncatedDicom("the file ends inside a data element or sequence") from None
    except RecursionError:
        raise NotDicom("the data set nests sequences too deeply to be a real instance") from None
    except Exception:  # pydicom signals malformed input with many exception types
        raise NotDicom("the data could not be parsed as a DICOM data set") from None


_Element = DataElement | RawDataElement


def _collect(ds: Dataset) -> dict[int, _Element]:
    """The top-level elements by tag, unconverted and without copying.

    ``Dataset._dict`` is private, but it is the only lookup that neither converts the
    element nor builds a ``Tag`` first (``get_item`` does both and costs ten times as
    much, which made these checks a tenth of the whole parse). pydicom has kept it
    since 1.0; should it go, the public items view still works.
    """
    elements = getattr(ds, "_dict", None)
    return elements if isinstance(elements, dict) else dict(ds.items())


def _check_complete(elements: dict[int, _Element], buffer: bytes, max_bytes: int) -> None:
    """Fail unless the last element read ends exactly where the data ends.

    pydicom stops quietly at the end of the data: a value cut short is kept short and a
    partial element header is dropped. Only the last element read can be affected, so
    checking it (in read order, O(1)) proves the whole top level was complete.
    """
    if not elements:
        raise TruncatedDicom("the file holds file meta information but no data set")
    last = next(reversed(elements.values()))
    if isinstance(last, RawDataElement):
        value = last.value or b""
        if last.length == _UNDEFINED:
            end = last.value_tell + len(value) + 8  # the value, then its delimiter item
        else:
            if len(value) < last.length:
                raise _short_value(last.length, max_bytes)
            end = last.value_tell + last.length
        # A few writers pad the file with zero bytes; anything else is a cut element header.
        if end > len(buffer) or buffer[end:].strip(b"\x00"):
            raise TruncatedDicom("the file ends inside a data element: it was cut short")
    elif isinstance(last, DataElement) and last.is_undefined_length:
        if not buffer.endswith(_SEQUENCE_DELIMITERS):
            raise TruncatedDicom("the file ends inside a sequence: it was cut short")


def _text(elements: dict[int, _Element], tag: int) -> str:
    """A text value (ASCII only: UIDs and code strings), from its raw bytes where raw."""
    element = elements.get(tag)
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        raw = element.value or b""
        return raw.decode("ascii", "replace").strip("\x00 ")
    value = element.value
    return "" if value is None else str(value).strip("\x00 ")


def _unsigned_short(elements: dict[int, _Element], tag: int) -> int | None:
    """A US value (VM 1); None where absent or malformed."""
    element = elements.get(tag)
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        raw = element.value or b""
        if len(raw) != 2:
            return None
        return int.from_bytes(raw, "little" if element.is_little_endian else "big")
    try:
        return int(element.value)
    except (TypeError, ValueError):
        return None


def _check_uids(elements: dict[int, _Element]) -> None:
    values = [_text(elements, tag) for tag in _UID_TAGS]
    # One match over all four (most instances pass) costs a quarter of four matches.
    if _UIDS_PATTERN.fullmatch("\\".join(values)) and max(map(len, values)) <= 64:
        return
    for keyword, value in zip(REQUIRED_UIDS, values, strict=True):
        if not value:
            raise MissingAttribute(f"{keyword} is missing or empty")
        if len(value) > 64 or _UID_PATTERN.fullmatch(value) is None:
            raise MissingAttribute(f"{keyword} is not a valid UID")


def _image_size(elements: dict[int, _Element]) -> tuple[int, int, int, int, int]:
    """Rows, Columns, Bits Allocated, Samples per Pixel and Number of Frames."""
    rows = _unsigned_short(elements, _ROWS)
    columns = _unsigned_short(elements, _COLUMNS)
    bits = _unsigned_short(elements, _BITS_ALLOCATED)
    for keyword, value in (("Rows", rows), ("Columns", columns), ("BitsAllocated", bits)):
        if not value:
            raise MissingAttribute(f"the instance has pixel data but {keyword} is missing")
    frames = _text(elements, _NUMBER_OF_FRAMES)
    return (
        rows or 0,
        columns or 0,
        bits or 0,
        _unsigned_short(elements, _SAMPLES_PER_PIXEL) or 1,
        max(int(frames), 1) if frames.isdigit() else 1,
    )


def _check_native_pixels(elements: dict[int, _Element], pixel_data: _Element) -> None:
    if isinstance(pixel_data, RawDataElement) and pixel_data.length == _UNDEFINED:
        raise UndecodableTransferSyntax(
            "the pixel data is encapsulated (compressed) but the transfer syntax is a native one"
        )
    rows, columns, bits, samples, frames = _image_size(elements)
    length = len(pixel_data.value or b"")
    if length * 8 >= rows * columns * samples * frames * bits:
        return
    if _text(elements, _PHOTOMETRIC) == "YBR_FULL_422" and (
        length * 8 >= rows * columns * 2 * frames * bits  # 4:2:2 keeps two values a pixel
    ):
        return
    raise TruncatedDicom(
        "the pixel data is shorter than Rows x Columns x Samples per Pixel x Bits "
        "Allocated x Number of Frames requires: the file was cut short"
    )


def _check_encapsulated_pixels(
    ds: Dataset,
    elements: dict[int, _Element],
    transfer_syntax: UID,
    max_bytes: int,
    keep_first_frame: bool,
) -> None:
    try:
        available = get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UndecodableTransferSyntax(
            f"no installed decoder handles pixel data in {transfer_syntax.name}"
        )
    rows, columns, bits, samples, frames = _image_size(elements)
    if rows * columns * samples * ((bits + 7) // 8) > max_bytes:
        raise TooLarge(f"one decoded frame would take more than the {max_bytes}-byte limit")
    try:
        # Frame by frame bounds the memory; every frame is decoded once to prove the data
        # can be used downstream. (iter_pixels fails on some valid files in pydicom 3.0.)
        for index in range(frames):
            frame = pixel_array(ds, index=index, raw=True)
            if keep_first_frame and index == 0 and samples == 1:  # raw or not, grey is grey
                _keep_first_frame(ds, frame)
    except Exception:  # each decoder plugin fails in its own way
        raise UndecodableTransferSyntax(
            f"the pixel data could not be decoded as {transfer_syntax.name}: it is corrupt "
            "or uses features the installed decoders lack"
        ) from None


# ---------------------------------------------------------------- the checked first frame
#
# parse_instance decodes encapsulated pixel data to prove it can be decoded; the service
# decodes the same first frame again right after (medai.training.reader). The first frame
# of a grey image is kept here, aside from the data set, so that the second decode can be
# skipped (asked for with keep_first_frame; ingest does not ask). Kept aside rather than
# on the data set: a copy of the data set must not carry it, and nothing holds it once the
# data set is gone.


@dataclass(frozen=True)
class _KeptFrame:
    owner: weakref.ref[Dataset]
    pixel_data: object  # the Pixel Data value that was decoded: compared by identity
    layout: tuple[object, ...]
    frame: np.ndarray


_kept: OrderedDict[int, _KeptFrame] = OrderedDict()
_kept_bytes = 0
# Re-entrant: a data set freed while the lock is held runs _drop through its weak reference.
_kept_lock = threading.RLock()


def _layout(ds: Dataset) -> tuple[object, ...]:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return (str(syntax), *(ds.get(keyword) for keyword in _LAYOUT))


def _pixel_value(ds: Dataset) -> object:
    element = ds.get(_PIXEL_DATA)
    return None if element is None else element.value


def _drop(key: int) -> _KeptFrame | None:
    global _kept_bytes
    with _kept_lock:
        entry = _kept.pop(key, None)
        if entry is not None:
            _kept_bytes -= entry.frame.nbytes
        return entry


def _forget(key: int, _: object) -> None:
    _drop(key)


def _keep_first_frame(ds: Dataset, frame: np.ndarray) -> None:
    """Keep ``frame``, the first frame of ``ds`` just decoded, for :func:`take_checked_frame`."""
    global _kept_bytes
    if frame.nbytes > KEPT_FRAMES_BYTES:
        return
    key = id(ds)
    # The entry goes when the data set does: nothing is held for a data set nobody has.
    owner = weakref.ref(ds, functools.partial(_forget, key))
    entry = _KeptFrame(owner, _pixel_value(ds), _layout(ds), frame)
    with _kept_lock:
        _drop(key)
        _kept[key] = entry
        _kept_bytes += frame.nbytes
        # Oldest out first while over the budget (frames nobody took, e.g. at ingest).
        while _kept_bytes > KEPT_FRAMES_BYTES and _kept:
            _drop(next(iter(_kept)))


def take_checked_frame(ds: Dataset) -> np.ndarray | None:
    """The first frame :func:`parse_instance` decoded from ``ds``, handed out once.

    Kept for grey (one sample per pixel) encapsulated images, whose first frame is the
    same with or without pydicom's colour conversion, while ``ds`` lives and until
    taken, within :data:`KEPT_FRAMES_BYTES` for all data sets together (the oldest go
    first). None when there is no such frame, or when the Pixel Data or the attributes
    that describe it (transfer syntax, rows, columns, bits, ...) changed since.

    Parameters
    ----------
    ds
        A data set returned by :func:`parse_instance`.

    Returns
    -------
    numpy.ndarray or None
        ``pydicom.pixels.pixel_array(ds, index=0)``, (Rows, Columns); the caller owns it.
    """
    entry = _drop(id(ds))
    if entry is None or entry.owner() is not ds:
        return None
    if _pixel_value(ds) is not entry.pixel_data or _layout(ds) != entry.layout:
        return None
    return entry.frame


@functools.lru_cache(maxsize=64)
def _syntax_facts(uid: str) -> tuple[bool, bool]:
    """Whether ``uid`` is a transfer syntax of the standard, and whether it compresses."""
    if _UID_PATTERN.fullmatch(uid) is None or UID(uid).type != "Transfer Syntax":
        return False, False
    return True, uid not in _NATIVE and UID(uid).is_compressed


@functools.lru_cache(maxsize=512)
def _is_image_storage(sop_class_uid: str) -> bool:
    return UID(sop_class_uid).name.endswith("Image Storage")


def _set_file_meta(ds: Dataset, elements: dict[int, _Element], transfer_syntax: str | None) -> str:
    meta = getattr(ds, "file_meta", None)
    if not isinstance(meta, FileMetaDataset):
        meta = ds.file_meta = FileMetaDataset()
    if not transfer_syntax:
        implicit, little = ds.original_encoding
        transfer_syntax = str(
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little or little is None
            else ExplicitVRBigEndian
        )
        meta.TransferSyntaxUID = UID(transfer_syntax)
    keys = meta.keys()
    if 0x00020002 not in keys:
        meta.MediaStorageSOPClassUID = UID(_text(elements, _SOP_CLASS))
    if 0x00020003 not in keys:
        meta.MediaStorageSOPInstanceUID = UID(_text(elements, _SOP_INSTANCE))
    return transfer_syntax


def _meta_start(data: bytes) -> tuple[bytes, int]:
    """``data`` as pydicom can read it, and where its file meta information starts."""
    if data[128:132] == b"DICM":
        return data, 132
    if data[:4] == b"DICM":
        return data[4:], 0  # a prefix without preamble; pydicom wants neither or both
    return data, 0


def readable_head(data: bytes, size: int = HEAD_BYTES) -> bytes:
    """Bytes pydicom can read an instance's leading elements from without inflating it.

    pydicom inflates a deflated data set whole, in one call, before it reads a single
    element (even with ``stop_before_pixels``): a deflate bomb would cost its inflated
    size. So for a deflated data set this is its first ``size`` bytes inflated, as a raw
    data set (Explicit VR Little Endian, no file meta); any other ``data`` is returned
    as it is; nothing when the file meta or the deflate stream is damaged. Meant for
    reading a few elements near the start (the UIDs); :func:`parse_instance` reads and
    checks an instance whole.

    Parameters
    ----------
    data
        The offered bytes.
    size
        The most inflated bytes to return.
    """
    body, start = _meta_start(data)
    try:
        syntax = _peek_transfer_syntax(body, start)
        meta_end = -1
        if syntax is None or syntax in _DEFLATED:
            meta_end, syntax = _file_meta_end(body, start, len(body))
        if syntax not in _DEFLATED:
            return data
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(body[meta_end:], size)
    except (MedaiError, zlib.error):
        # Damaged file meta or deflate stream: nothing that pydicom could inflate whole.
        return b""


def parse_instance(
    data: bytes,
    *,
    max_bytes: int,
    max_inflate_ratio: float = DEFAULT_MAX_RATIO,
    keep_first_frame: bool = False,
) -> Dataset:
    """Parse one DICOM instance from ``data`` and check that it can be ingested.

    Accepted: Part 10 files (with or without the 128-byte preamble), raw data sets
    without file meta information (implicit or explicit VR, the transfer syntax is
    inferred), deflated data sets. Native pixel data is never decoded (its length is
    checked); encapsulated pixel data is decoded once, every frame, to prove an
    installed decoder handles it. Nested sequence items are parsed by pydicom on
    first access, as with :func:`pydicom.dcmread`; the top level is read completely.

    Parameters
    ----------
    data : bytes
        The offered bytes.
    max_bytes : int
        Largest accepted instance. A data element that declares more than this is
        taken as corrupt (:class:`TooLarge`); one that declares more than the file
        holds but less than this, as a file cut short (:class:`TruncatedDicom`).
    max_inflate_ratio : float
        A deflated data set may inflate to at most this many times its deflated size
        (and never past ``max_bytes``; see :func:`medai.dicom.inflate.inflate_limit`).
        Past it, inflation stops and :class:`~medai.errors.DecompressionBomb` (a
        :class:`TooLarge`) is raised: pydicom never sees the data set, since it would
        inflate it whole.
    keep_first_frame : bool
        Keep the first frame the check decodes, for :func:`take_checked_frame` (the
        service, which decodes it next; ingest does not need it and keeps nothing).

    Returns
    -------
    pydicom.dataset.Dataset
        The data set, all of its bytes in memory, with ``file_meta`` holding at least
        TransferSyntaxUID, MediaStorageSOPClassUID and MediaStorageSOPInstanceUID.

    Raises
    ------
    TooLarge, NotDicom, TruncatedDicom, MissingAttribute, UndecodableTransferSyntax
        With a message that names what is wrong but no value from the file.
    """
    if len(data) > max_bytes:
        raise TooLarge(f"the instance is {len(data)} bytes, more than the {max_bytes}-byte limit")
    if not data:
        raise NotDicom("the file is empty")
    data, start = _meta_start(data)
    transfer_syntax = _peek_transfer_syntax(data, start)
    if transfer_syntax is None or transfer_syntax in _DEFLATED:
        meta_end, transfer_syntax = _file_meta_end(data, start, max_bytes)
    else:
        meta_end = -1  # only needed to split a deflated file
    if meta_end == start == 0 and data[:2] not in _RAW_START:
        raise NotDicom(
            "the data has no DICOM preamble, no file meta information and does not start "
            "with a DICOM data element"
        )
    if transfer_syntax is not None and not _syntax_facts(transfer_syntax)[0]:
        raise UndecodableTransferSyntax(
            "the transfer syntax is not one defined by the DICOM standard (private or "
            "unknown), so the data set cannot be read"
        )
    if transfer_syntax in _DEFLATED:
        ds = _read(data[:meta_end])
        meta, preamble = ds.file_meta, ds.preamble
        buffer = _inflate(data[meta_end:], max_bytes, max_inflate_ratio)
        ds = _read(buffer)
        ds.file_meta, ds.preamble = meta, preamble
    else:
        buffer = data
        ds = _read(buffer)
    elements = _collect(ds)
    _check_complete(elements, buffer, max_bytes)
    _check_uids(elements)
    syntax = _set_file_meta(ds, elements, transfer_syntax)
    pixel_data = elements.get(_PIXEL_DATA)
    if pixel_data is None:
        if (
            _FLOAT_PIXEL_DATA not in elements
            and _DOUBLE_PIXEL_DATA not in elements
            and (_is_image_storage(_text(elements, _SOP_CLASS)))
        ):
            raise TruncatedDicom(
                "the instance is of an image storage class but holds no pixel data: "
                "the file was probably cut short"
            )
    elif not _syntax_facts(syntax)[1]:
        _check_native_pixels(elements, pixel_data)
    else:
        _check_encapsulated_pixels(ds, elements, UID(syntax), max_bytes, keep_first_frame)
    return ds
