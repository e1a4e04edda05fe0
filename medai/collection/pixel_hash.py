"""A keyed hash of an instance's decoded pixels: the same image re-sent is recognised.

A site may send an image again under new UIDs, or under another MRN; its pixels are the
same. Native (uncompressed) little-endian pixel data already is the decoded pixels, so its
bytes are hashed as they are, with no decoding; encapsulated pixel data is decoded frame by
frame (memory stays one frame) and the arrays are hashed. The image geometry is hashed too,
so equal bytes laid out differently never match. An image of one value throughout (a blank
frame) gets no hash: it would link unrelated patients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

if TYPE_CHECKING:
    import hmac

    from pydicom import Dataset

__all__ = ["PixelHashStatus", "pixel_hash"]

PixelHashStatus = Literal["native", "decoded", "undecodable", "no-pixels", "constant"]

_PIXEL_DATA = 0x7FE00010
_GEOMETRY = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
)
# Little-endian native syntaxes (deflated data sets are already inflated when read).
_NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"})


def _geometry(ds: Dataset) -> bytes:
    values = []
    for keyword in _GEOMETRY:
        value = ds.get(keyword)
        text = str(value).strip(" \x00") if value is not None else ""
        values.append(text or ("1" if keyword in {"SamplesPerPixel", "NumberOfFrames"} else ""))
    return "\x00".join(values).encode("ascii", "replace") + b"\x00"


def pixel_hash(ds: Dataset, hasher: hmac.HMAC) -> tuple[str | None, PixelHashStatus]:
    """The keyed hash of ``ds``'s decoded pixels, and how it was obtained.

    Parameters
    ----------
    ds
        A parsed instance (see :func:`medai.dicom.read.parse_instance`).
    hasher
        A fresh keyed hash (:meth:`medai.collection.pseudonymize.Pseudonymizer.pixel_hasher`).

    Returns
    -------
    tuple
        ``(hex digest, "native" | "decoded")``, or ``(None, reason)``: ``"no-pixels"``
        (no Pixel Data), ``"undecodable"`` (no installed decoder reads it) or
        ``"constant"`` (one value throughout).
    """
    elem = ds.get(_PIXEL_DATA)
    if elem is None or not elem.value:
        return None, "no-pixels"
    hasher.update(_geometry(ds))
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax in _NATIVE_LE:
        value: bytes = elem.value
        width = max(int(ds.get("BitsAllocated") or 8) // 8, 1)
        if len(value) >= width and value == value[:width] * (len(value) // width):
            return None, "constant"
        hasher.update(value)
        return hasher.hexdigest(), "native"
    constant = True
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        for index in range(max(frames, 1)):
            # raw: the stored colour space, so a YBR re-send is not converted on one side only
            frame = pixel_array(ds, index=index, raw=True)
            constant = constant and bool(frame.size == 0 or frame.min() == frame.max())
            hasher.update(frame.tobytes())
    except Exception:  # each decoder plugin fails in its own way; the input is still stored
        return None, "undecodable"
    if constant:
        return None, "constant"
    status: PixelHashStatus = "decoded" if UID(syntax).is_compressed else "native"
    return hasher.hexdigest(), status
