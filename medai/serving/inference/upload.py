"""The body of ``POST /v1/predict``: one study's instances, read into memory and parsed.

Two forms are taken: ``application/dicom`` (one instance, the body is the file) and
``multipart/related; type="application/dicom"`` (one or more instances, as STOW-RS
sends them; parsed by :func:`medai.dicom.multipart.parse_multipart_related`).
``multipart/form-data`` is refused on purpose: the usual form parsers spool large
uploads to temporary files, and these files identify patients. The body is never
written anywhere.

Each instance is parsed and checked by :func:`medai.dicom.read.parse_instance`; every
instance must hold an image and belong to the same study. Errors are domain errors
(:class:`~medai.errors.UnsupportedMediaType` 415, :class:`~medai.errors.MalformedMultipart`
400, :class:`~medai.errors.UnreadableStudy` 422, :class:`~medai.errors.RequestTooLarge`
413, answered by :mod:`medai.serving.errors`) whose message names an instance by its
position, never by a value from the file.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from medai.dicom.multipart import (
    DICOM_MEDIA_TYPE,
    check_content_type,
    parse_content_type,
    parse_multipart_related,
)
from medai.dicom.read import parse_instance
from medai.errors import Rejected, RequestTooLarge, UnreadableStudy, UnsupportedMediaType

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["ACCEPTED_TYPES", "check_upload_type", "parse_study", "study_too_large"]

logger = logging.getLogger(__name__)

ACCEPTED_TYPES = (
    "send one instance as Content-Type: application/dicom, or one or more instances of "
    'one study as Content-Type: multipart/related; type="application/dicom"; boundary=...'
)


def check_upload_type(content_type: str | None) -> str:
    """``"single"`` or ``"multipart"`` for an acceptable Content-Type.

    Checked before the body is read, so a wrong upload costs no transfer.

    Raises
    ------
    UnsupportedMediaType, MalformedMultipart
        For any other Content-Type, or a multipart one without its boundary.
    """
    if not content_type:
        raise UnsupportedMediaType(f"no Content-Type: {ACCEPTED_TYPES}")
    try:
        media_type, _ = parse_content_type(content_type)
        if media_type == DICOM_MEDIA_TYPE:
            return "single"
        if media_type == "multipart/related":
            check_content_type(content_type)
            return "multipart"
    except UnsupportedMediaType as exc:
        raise UnsupportedMediaType(f"{exc}; {ACCEPTED_TYPES}") from None
    raise UnsupportedMediaType(f"{media_type!r} is not accepted: {ACCEPTED_TYPES}")


def study_too_large(max_bytes: int) -> RequestTooLarge:
    """The error of a study over ``max_bytes`` (MEDAI_MAX_PREDICT_BYTES)."""
    return RequestTooLarge(
        max_bytes,
        setting="MEDAI_MAX_PREDICT_BYTES",
        advice="send its images only, or ask the operator",
        what="the study",
    )


def parse_study(
    kind: str, content_type: str, body: bytes, *, max_instance_bytes: int
) -> list[Dataset]:
    """The instances of the upload, parsed in memory: one study, each with an image.

    Call it in a worker thread (parsing checks, and may decode, the pixel data).

    Raises
    ------
    UnsupportedMediaType
        For a part that is not ``application/dicom``.
    MalformedMultipart
        For a malformed multipart body.
    UnreadableStudy
        For an instance that is not DICOM, cannot be read, holds no image, or belongs to
        another study than the first.
    """
    if kind == "single":
        blobs = [body]
    else:
        try:
            blobs = [part.data for part in parse_multipart_related(content_type, body)]
        except UnsupportedMediaType as exc:
            raise UnsupportedMediaType(f"{exc}; {ACCEPTED_TYPES}") from None
    datasets: list[Dataset] = []
    for number, blob in enumerate(blobs, 1):
        where = "the instance" if len(blobs) == 1 else f"instance {number}"
        try:
            # The first frame decoded by the check is kept for the decode that follows.
            ds = parse_instance(blob, max_bytes=max_instance_bytes, keep_first_frame=True)
        except Rejected as exc:
            raise UnreadableStudy(
                f"{where} cannot be read as DICOM ({exc.reason_code}): {exc}"
            ) from None
        except Exception as exc:  # pydicom's many ways of failing on a broken file
            logger.info("unreadable instance in a prediction request: %s", type(exc).__name__)
            raise UnreadableStudy(
                f"{where} cannot be read as DICOM ({type(exc).__name__})"
            ) from None
        if "PixelData" not in ds:
            raise UnreadableStudy(
                f"{where} holds no image (no Pixel Data): send the study's images, "
                "not its reports or presentation states"
            )
        if datasets and ds.StudyInstanceUID != datasets[0].StudyInstanceUID:
            raise UnreadableStudy(
                f"{where} belongs to another study than instance 1: one request "
                "predicts one study; send each study in its own request"
            )
        datasets.append(ds)
    return datasets
