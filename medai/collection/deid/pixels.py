"""Pixel rules: objects that may carry burned-in or free-text PHI; overlay bits above HighBit."""

from __future__ import annotations

import re
from typing import Any, cast

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID

from medai.errors import BurnedInAnnotation, CannotDeidentify, UnsupportedObject

__all__ = [
    "ACCEPTED_MODALITIES",
    "BURNED_IN_MODALITIES",
    "clear_overlay_bits",
    "screen_object",
]

PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float / Double Float

ACCEPTED_MODALITIES = frozenset(
    {"CR", "CT", "DX", "IO", "MG", "MR", "NM", "PT", "PX", "RF", "RG", "XA"}
)
"""Projection and cross-sectional modalities whose pixels do not, by practice, carry
identifying text unless BurnedInAnnotation says so."""

BURNED_IN_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "SM"})
"""Modalities known to burn patient data into the pixels; no clean-pixel rule exists."""

# SOP classes whose content is (or may be) free text or a document: no rule covers them.
_UNSUPPORTED_SOP_CLASSES = (
    ("1.2.840.10008.5.1.4.1.1.88", "structured report or key object selection"),
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.481", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data, registration, segmentation or fiducials"),
    ("1.2.840.10008.5.1.4.1.1.9", "waveform"),
)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_CS_VALUE = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def screen_object(ds: Dataset) -> None:
    """Refuse objects that may carry PHI this profile cannot remove.

    Parameters
    ----------
    ds
        The original dataset (not modified).

    Raises
    ------
    UnsupportedObject
        SR, key object selection, presentation states, encapsulated documents, RT,
        raw data/registration/segmentation, waveforms, and any object without pixel data.
    BurnedInAnnotation
        BurnedInAnnotation is YES, a Secondary Capture SOP class, or a modality outside
        :data:`ACCEPTED_MODALITIES` (US, SC, OT, XC, ... have no clean-pixel rule).
    """
    sop_class = _text(ds, 0x00080016)
    for prefix, kind in _UNSUPPORTED_SOP_CLASSES:
        if sop_class == prefix or sop_class.startswith(prefix + "."):
            raise UnsupportedObject(
                f"{_sop_name(sop_class)} ({kind}) may hold free text and no "
                "de-identification rule exists for it"
            )
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        raise BurnedInAnnotation(
            f"{_sop_name(sop_class)}: secondary captures may show burned-in patient data "
            "and no clean-pixel rule exists for them"
        )
    if not any(BaseTag(tag) in ds._dict for tag in _PIXEL_TAGS):
        raise UnsupportedObject(
            f"{_sop_name(sop_class)} has no pixel data; non-image objects may hold free "
            "text and no de-identification rule exists for them"
        )
    burned = _text(ds, 0x00280301).upper()
    if burned == "YES":
        raise BurnedInAnnotation("BurnedInAnnotation is YES: the pixels show identifying text")
    modality = _text(ds, 0x00080060).upper()
    if modality not in ACCEPTED_MODALITIES:
        shown = f"modality {modality}" if _CS_VALUE.match(modality) else "an unrecognised modality"
        reason = (
            "burns patient data into the pixels"
            if modality in BURNED_IN_MODALITIES
            else "may carry burned-in patient data"
        )
        raise BurnedInAnnotation(f"{shown} {reason} and no clean-pixel rule exists for it")


def clear_overlay_bits(ds: Dataset) -> bool:
    """Clear overlay bits stored in native pixel data above HighBit.

    Unsigned samples are masked to HighBit; signed samples are sign-extended from HighBit,
    so data that is already sign-extended stays byte-identical. Native data is only read
    through a numpy view, and only rewritten when a bit actually changes. Encapsulated
    data is decoded once and refused if any sample has bits above HighBit (re-encoding
    would alter the pixels).

    Parameters
    ----------
    ds
        The dataset; its PixelData is replaced in place when bits were cleared.

    Returns
    -------
    bool
        Whether the pixel data changed.

    Raises
    ------
    CannotDeidentify
        Encapsulated pixel data with bits set above HighBit, or that cannot be decoded.
    """
    if BaseTag(PIXEL_DATA) not in ds._dict:
        return False
    bits_allocated = _us(ds, 0x00280100)
    bits_stored = _us(ds, 0x00280101)
    if bits_allocated not in (8, 16, 32) or bits_stored is None:
        return False
    high_bit = _us(ds, 0x00280102)
    high_bit = bits_stored - 1 if high_bit is None else high_bit
    if not 0 <= high_bit < bits_allocated - 1:
        return False  # nothing above HighBit
    signed = _us(ds, 0x00280103) == 1
    syntax = _transfer_syntax(ds)
    if syntax.is_encapsulated:
        _refuse_encapsulated_overlay_bits(ds, high_bit, signed)
        return False

    value = _bytes(ds._dict[BaseTag(PIXEL_DATA)].value)
    itemsize = bits_allocated // 8
    count = len(value) // itemsize
    order = "<" if syntax.is_little_endian else ">"
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{itemsize}")
    samples = np.frombuffer(value, dtype=dtype, count=count)
    if signed:
        low, high = -(1 << high_bit), (1 << high_bit) - 1
        if samples.size == 0 or (samples.min() >= low and samples.max() <= high):
            return False
        shift = bits_allocated - (high_bit + 1)
        cleared = np.right_shift(np.left_shift(samples, shift), shift).astype(dtype)
    else:
        mask = (1 << (high_bit + 1)) - 1
        if samples.size == 0 or samples.max() <= mask:
            return False
        cleared = np.bitwise_and(samples, mask).astype(dtype)
    # Keep the element's VR (a raw element from a file may have none: implicit VR).
    vr = getattr(ds._dict[BaseTag(PIXEL_DATA)], "VR", None)
    vr = vr if vr in ("OB", "OW") else ("OB" if bits_allocated == 8 else "OW")
    ds[PIXEL_DATA] = DataElement(PIXEL_DATA, vr, cleared.tobytes() + value[count * itemsize :])
    return True


def _refuse_encapsulated_overlay_bits(ds: Dataset, high_bit: int, signed: bool) -> None:
    from pydicom.pixels.utils import iter_pixels  # the decoder stack is only needed here

    if signed:
        low, high = -(1 << high_bit), (1 << high_bit) - 1
    else:
        low, high = 0, (1 << (high_bit + 1)) - 1
    try:
        for frame in iter_pixels(ds, raw=True, correct_unused_bits=False):
            if frame.size and (int(frame.min()) < low or int(frame.max()) > high):
                raise CannotDeidentify(
                    "compressed pixel data has overlay bits set above HighBit; clearing "
                    "them would need re-encoding the image"
                )
    except CannotDeidentify:
        raise
    except Exception as exc:  # any decoder failure means the bits cannot be checked
        raise CannotDeidentify(
            f"compressed pixel data could not be decoded to check for overlay bits "
            f"({exc.__class__.__name__})"
        ) from None


def _transfer_syntax(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    # Without file meta, pydicom itself assumes explicit VR little endian for writing.
    return UID(str(syntax)) if syntax else UID("1.2.840.10008.1.2.1")


def _sop_name(sop_class: str) -> str:
    if not sop_class:
        return "an object without SOPClassUID"
    uid = UID(sop_class)
    return uid.name if uid.is_valid and uid.name != sop_class else "a private SOP class"


def _text(ds: Dataset, tag: int) -> str:
    """First value of a short ASCII attribute, read without decoding the element."""
    elem = ds._dict.get(BaseTag(tag))
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif not isinstance(value, str):
        value = value[0] if len(value) else ""  # multi-valued
    return str(value).split("\\")[0].strip(" \x00")


def _us(ds: Dataset, tag: int) -> int | None:
    """A US value (BitsAllocated, ...), read without decoding the element."""
    elem = ds._dict.get(BaseTag(tag))
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) != 2:
            return None
        little = getattr(elem, "is_little_endian", True)
        return int.from_bytes(value, "little" if little else "big")
    try:
        return int(cast(Any, value))
    except (TypeError, ValueError):
        return None


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    value.seek(0)  # a buffered (file-like) element value
    return bytes(value.read())
