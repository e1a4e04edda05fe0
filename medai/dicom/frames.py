"""What WADO-RS answers from one stored instance: its metadata, its frames, a rendered frame.

Kept apart from the web service so it can be tested on files alone. The instances are
medai's de-identified output, so nothing here has PHI to guard; what it guards against is
a frame number out of range or pixel data that cannot be decoded (both
:class:`~medai.errors.DicomwebQueryError` / :class:`~medai.errors.DicomwebNotFound`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.encaps import get_frame
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from medai.errors import DicomwebNotFound, DicomwebQueryError

__all__ = [
    "EXPLICIT_LITTLE",
    "PIXEL_DATA",
    "RenderFormat",
    "frame_bytes",
    "metadata_json",
    "parse_frame_list",
    "render_frame",
]

PIXEL_DATA: Final = 0x7FE00010
EXPLICIT_LITTLE: Final = "1.2.840.10008.1.2.1"
RenderFormat = Literal["image/jpeg", "image/png"]
# Binary values larger than this are left out of metadata and given a BulkDataURI.
_BULK_THRESHOLD: Final = 1024
_MAX_FRAMES_PER_REQUEST: Final = 1000


def parse_frame_list(text: str, number_of_frames: int) -> list[int]:
    """The 1-based frame numbers of a WADO-RS ``{frames}`` path segment (``1,3,5``)."""
    numbers: list[int] = []
    for item in text.split(","):
        if not re.fullmatch(r"[0-9]{1,9}", item.strip()):
            raise DicomwebQueryError("frames are 1-based numbers separated by commas: 1,2,3")
        numbers.append(int(item))
    if len(numbers) > _MAX_FRAMES_PER_REQUEST:
        raise DicomwebQueryError(f"ask for at most {_MAX_FRAMES_PER_REQUEST} frames at once")
    for number in numbers:
        if not 1 <= number <= number_of_frames:
            raise DicomwebNotFound(
                f"frame {number} does not exist: the instance has {number_of_frames} frame(s)"
            )
    return numbers


def metadata_json(path: Path, bulk_uri: Callable[[int], str]) -> dict[str, Any]:
    """The DICOM JSON of a stored instance (PS3.18 F.2) without its bulk data.

    Pixel data and any other top-level binary value over 1 KiB are replaced by a
    ``BulkDataURI`` (``bulk_uri(tag)``); the pixel data is never read.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)

    def handler(element: DataElement) -> str:
        return bulk_uri(int(element.tag))

    result: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=_BULK_THRESHOLD, bulk_data_element_handler=handler
    )
    if "PixelData" not in ds and "Rows" in ds:
        encapsulated = UID(ds.file_meta.TransferSyntaxUID).is_encapsulated
        eight_bit = int(ds.get("BitsAllocated", 16)) <= 8
        result["7FE00010"] = {
            "vr": "OB" if encapsulated or eight_bit else "OW",
            "BulkDataURI": bulk_uri(PIXEL_DATA),
        }
    return result


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _decode(ds: pydicom.Dataset, index: int) -> np.ndarray[Any, Any]:
    """Frame ``index`` (0-based) decoded to an array; 400 when it cannot be decoded."""
    try:
        ds.pixel_array_options(index=index)  # decode this frame only
        array: np.ndarray[Any, Any] = ds.pixel_array
        return array
    except Exception as exc:  # the decoders raise many types; none may reach the client
        raise DicomwebQueryError(
            f"the instance's pixel data cannot be decoded ({type(exc).__name__})"
        ) from None


def frame_bytes(ds: pydicom.Dataset, number: int, *, native: bool) -> tuple[bytes, str]:
    """Frame ``number`` (1-based) of ``ds`` and the transfer syntax its bytes are in.

    Uncompressed pixel data is sliced as stored. Compressed pixel data is sent as its
    encoded frame when ``native`` (the client accepts any transfer syntax), else decoded
    to Explicit VR Little Endian bytes.
    """
    if "PixelData" not in ds:
        raise DicomwebNotFound("the instance has no pixel data")
    frames = _number_of_frames(ds)
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    if transfer_syntax.is_encapsulated:
        if native:
            return get_frame(ds.PixelData, number - 1, number_of_frames=frames), transfer_syntax
        return _decode(ds, number - 1).astype("<" + _dtype_char(ds)).tobytes(), EXPLICIT_LITTLE
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    if bits < 8:
        return _decode(ds, number - 1).tobytes(), EXPLICIT_LITTLE
    size = int(ds.Rows) * int(ds.Columns) * samples * bits // 8
    data: bytes = ds.PixelData
    return data[(number - 1) * size : number * size], str(transfer_syntax)


def _dtype_char(ds: pydicom.Dataset) -> str:
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits = int(ds.get("BitsAllocated", 16))
    width = 1 if bits <= 8 else (2 if bits <= 16 else 4)
    return ("i" if signed else "u") + str(width)


def render_frame(ds: pydicom.Dataset, number: int, media_type: RenderFormat) -> bytes:
    """Frame ``number`` (1-based) rendered for display: 8-bit PNG or JPEG.

    Grayscale goes through the modality and VOI LUTs of the instance (its window, or the
    frame's full range without one); MONOCHROME1 is inverted so that it reads as on a
    viewer. Colour images are sent as RGB.
    """
    if "PixelData" not in ds:
        raise DicomwebNotFound("the instance has no pixel data to render")
    frames = _number_of_frames(ds)
    if not 1 <= number <= frames:
        raise DicomwebNotFound(f"frame {number} does not exist: the instance has {frames}")
    from PIL import Image

    array = _decode(ds, number - 1)
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        values = apply_modality_lut(array, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds)
        values = values.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else values * 0.0
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255.0 - scaled
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    else:
        rgb = array.astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        image = Image.fromarray((rgb / top * 255.0).round().astype(np.uint8), mode="RGB")
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=90)
    return out.getvalue()
