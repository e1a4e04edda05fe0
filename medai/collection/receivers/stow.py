"""STOW-RS (PS3.18 10.5) without a web framework: the request body in, the response out.

:func:`medai.dicom.multipart.parse_multipart_related` splits a
``multipart/related; type="application/dicom"`` body into its DICOM parts;
:func:`store_instances` offers them to the
:class:`~medai.collection.pipeline.IngestPipeline` as one batch and builds the Store
Instances Response (PS3.18 10.5.3) as DICOM JSON. The web service
(:mod:`medai.serving.dicomweb`) only reads the body, checks the caller and sends the
:class:`StoreResult` back; this module imports no web framework.

What the response may say: the SOP Class and SOP Instance UIDs of each part, exactly as
the sender sent them (so it can match them to its own list), a PS3.18 failure reason code
for each part not accepted, and, in HTTP Warning headers (PS3.18's Warning header field,
``299 {+service}: <text>``), why in words with medai's own reason code (``not-dicom``,
``burned-in-annotation`` ...) and the parts' 1-based positions. The Failed SOP Sequence
item of PS3.18 Table 10.5.3-1 has no attribute for free text, so the words travel in the
header only. Never any other value from a file: a UID is echoed only when it is a
syntactically valid UID, so free text can never leak through a malformed one; the words
are fixed sentences.
The response has no Retrieve URL: medai does not serve instances back (it holds them
de-identified, under other UIDs).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any, Final

from medai.errors import UnknownSite

if TYPE_CHECKING:
    from medai.collection.pipeline import IngestPipeline
    from medai.dicom.multipart import Part

__all__ = [
    "FAILURE_CODES",
    "REASON_TEXTS",
    "RESPONSE_MEDIA_TYPE",
    "EDGE_SOURCE",
    "SOURCE",
    "PartIdentity",
    "StoreResult",
    "identify_part",
    "is_valid_uid",
    "store_instances",
    "warning_header",
]

logger = logging.getLogger(__name__)

SOURCE: Final = "stow-rs"
# The source of instances a site's edge gateway de-identified and forwarded by STOW-RS.
EDGE_SOURCE: Final = "edge"
RESPONSE_MEDIA_TYPE: Final = "application/dicom+json"

# PS3.18 Table 10.5.3-2 (the Failure Reason values, from PS3.4 Annex B), per medai reason.
OUT_OF_RESOURCES: Final = 0xA700  # refused: the catalog or the store failed; retry later
DOES_NOT_MATCH: Final = 0xA900  # error: data set does not match (SOP class, target study)
CANNOT_UNDERSTAND: Final = 0xC000  # error: cannot understand
SYNTAX_NOT_SUPPORTED: Final = 0xC122  # referenced transfer syntax not supported
PROCESSING_FAILURE: Final = 0x0110  # processing failure
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122  # referenced SOP class not supported

FAILURE_CODES: Final[dict[str, int]] = {
    "not-dicom": CANNOT_UNDERSTAND,
    "truncated": CANNOT_UNDERSTAND,
    "missing-attribute": DOES_NOT_MATCH,
    "undecodable-transfer-syntax": SYNTAX_NOT_SUPPORTED,
    "unsupported-object": SOP_CLASS_NOT_SUPPORTED,
    # Policy refusals: sending the same instance again would not help, so not A700.
    "burned-in-annotation": PROCESSING_FAILURE,
    "cannot-deidentify": PROCESSING_FAILURE,
    "too-large": PROCESSING_FAILURE,
    "edge-not-deidentified": PROCESSING_FAILURE,
    "edge-identified": PROCESSING_FAILURE,
}
# Not a quarantine reason: the part was refused before ingest (never in medai's custody).
WRONG_STUDY: Final = "wrong-study"
NOT_TAKEN: Final = "not-taken"  # the batch could not be recorded (catalog or store failure)

# Why, in words a site's PACS administrator can act on; fixed sentences, never file values.
REASON_TEXTS: Final[dict[str, str]] = {
    "not-dicom": "not a DICOM file; send DICOM Part 10 instances",
    "truncated": "the DICOM data ends early (cut short); send the instance again whole",
    "missing-attribute": "a required attribute (e.g. a UID or the patient ID) is missing",
    "undecodable-transfer-syntax": "its transfer syntax cannot be decoded; send it "
    "uncompressed or in a standard compression",
    "unsupported-object": "this kind of object (SOP class or modality) is not collected",
    "burned-in-annotation": "it may carry text burned into the pixels, which cannot be "
    "de-identified; it is held in quarantine for review",
    "cannot-deidentify": "it could not be de-identified; it is held in quarantine for review",
    "too-large": "it is larger than the limit for one instance",
    "edge-not-deidentified": "it lacks medai's de-identification markers; an edge sends "
    "only what it de-identified itself; it is held in quarantine for review",
    "edge-identified": "it still looks identified; it is held in quarantine for review",
    WRONG_STUDY: "it belongs to another study than the one in the request URL; not stored",
    NOT_TAKEN: "nothing could be recorded (catalog or store unavailable); send it again later",
}
_OTHER_REASON: Final = "it was not accepted; it is held in quarantine for review"

# DICOM JSON tags of the Store Instances Response Module (PS3.18 Table 10.5.3-1).
_FAILED_SOP_SEQUENCE: Final = "00081198"
_REFERENCED_SOP_SEQUENCE: Final = "00081199"
_REFERENCED_SOP_CLASS: Final = "00081150"
_REFERENCED_SOP_INSTANCE: Final = "00081155"
_FAILURE_REASON: Final = "00081197"

_UID: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_RAW_START: Final = (b"\x08\x00", b"\x00\x08")  # group 0x0008, little or big endian


# -- what the sender sent: the UIDs to reference in the response ----------------------------


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a UID by PS3.5 9.1: digits and dots, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


@dataclass(frozen=True)
class PartIdentity:
    """The UIDs of a part as the sender sent them; None where unreadable or not a UID."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


def identify_part(data: bytes) -> PartIdentity:
    """Read the SOP Class, SOP Instance and Study Instance UIDs of one part, if it has them.

    Only these three elements are read; anything that fails gives None for what it could
    not read (the pipeline decides what is wrong with the file).
    """
    from pydicom import dcmread
    from pydicom.tag import Tag

    from medai.dicom.read import readable_head

    # A Part 10 file, or a raw data set starting with a group 0x0008 element; anything
    # else is left to the pipeline (pydicom would only warn about guessing at it).
    if data[128:132] != b"DICM" and data[:4] != b"DICM" and data[:2] not in _RAW_START:
        return PartIdentity()
    try:
        ds = dcmread(
            # Never the whole of a deflated part: pydicom would inflate all of it at once.
            BytesIO(readable_head(data)),
            force=True,
            stop_before_pixels=True,
            specific_tags=[Tag(0x0008, 0x0016), Tag(0x0008, 0x0018), Tag(0x0020, 0x000D)],
        )

        def uid(keyword: str) -> str | None:
            value = str(ds.get(keyword, "") or "").strip(" \x00")
            return value if is_valid_uid(value) else None

        return PartIdentity(uid("SOPClassUID"), uid("SOPInstanceUID"), uid("StudyInstanceUID"))
    except Exception:  # anything may be offered, pydicom fails many ways; the pipeline judges it
        return PartIdentity()


# -- the store transaction and its response -------------------------------------------------


@dataclass
class StoreResult:
    """The outcome of one STOW-RS request.

    ``status`` is the HTTP status PS3.18 10.5.3 prescribes: 200 when every instance was
    accepted (stored or already held), 202 when some were and some failed, 409 when
    none was, 503 when the batch could not be recorded at all (retry it). ``body`` is the
    Store Instances Response as DICOM JSON; ``warnings`` are the texts of the HTTP Warning
    headers (see :func:`warning_header`): medai's reason for each failed part, in words and
    as its code, by the part's 1-based position in the request.
    """

    status: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    stored: int = 0
    duplicate: int = 0
    failed: int = 0


def store_instances(
    pipeline: IngestPipeline,
    parts: Sequence[Part],
    site: str,
    *,
    study_instance_uid: str | None = None,
    edge_receipt_day: dt.date | None = None,
) -> StoreResult:
    """Offer the parts of one request to ``pipeline`` and build the PS3.18 response.

    Parameters
    ----------
    pipeline
        An :class:`~medai.collection.pipeline.IngestPipeline` (its ``actor`` is what the
        audit records name).
    parts
        From :func:`medai.dicom.multipart.parse_multipart_related`.
    site
        The campaign site the request comes from (already checked).
    study_instance_uid
        The study of the target resource (``POST /studies/{study}``): a part whose
        readable StudyInstanceUID differs is refused with 0xA900 and not ingested, so
        it stays with its sender. A part whose study cannot be read is offered anyway
        (the pipeline quarantines what it cannot understand).
    edge_receipt_day
        Set when a site's edge gateway sends (its ``edge`` key): the day its instances
        were received there. They are re-screened, not de-identified again, and get an
        EdgeReceipt (see :class:`~medai.collection.outcomes.Offer`); source ``edge``.

    Returns
    -------
    StoreResult
        Parts that ended ``stored`` or ``duplicate`` are referenced; ``quarantined``
        ones are failed (they are in medai's custody, but were not accepted). If the
        batch could not be recorded (a catalog or store error) every offered part is
        failed with 0xA700 and the status is 503: nothing was accepted, send it again.

    Raises
    ------
    UnknownSite
        When ``site`` is not a site of the campaign (nothing is recorded).
    """
    from medai.collection.outcomes import Offer

    identities = [identify_part(part.data) for part in parts]
    refused = {
        index
        for index, identity in enumerate(identities)
        if study_instance_uid is not None
        and identity.study_instance_uid is not None
        and identity.study_instance_uid != study_instance_uid
    }
    offered = [index for index in range(len(parts)) if index not in refused]
    source = SOURCE if edge_receipt_day is None else EDGE_SOURCE
    offers = [
        Offer(parts[index].data, site, source, edge_receipt_day=edge_receipt_day)
        for index in offered
    ]
    reasons: dict[int, str] = dict.fromkeys(refused, WRONG_STUDY)
    codes: dict[int, int] = dict.fromkeys(refused, DOES_NOT_MATCH)
    accepted: dict[int, str] = {}
    not_recorded = False
    if offers:
        try:
            outcomes = pipeline.ingest_many(offers)
        except UnknownSite:
            raise
        except Exception as exc:  # any failure means not in custody: the sender must retry
            logger.error(
                "could not take a STOW-RS batch from %s into custody: %s", site, type(exc).__name__
            )
            not_recorded = True
            for index in offered:
                reasons[index], codes[index] = NOT_TAKEN, OUT_OF_RESOURCES
        else:
            for index, outcome in zip(offered, outcomes, strict=True):
                if outcome.kind == "quarantined":
                    reason = outcome.reason_code or "rejected"
                    reasons[index] = reason
                    codes[index] = FAILURE_CODES.get(reason, PROCESSING_FAILURE)
                else:
                    accepted[index] = outcome.kind

    referenced = [_sop_item(identities[i]) for i in range(len(parts)) if i in accepted]
    failed = [
        _sop_item(identities[i]) | {_FAILURE_REASON: {"vr": "US", "Value": [codes[i]]}}
        for i in range(len(parts))
        if i in codes
    ]
    body: dict[str, Any] = {}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if not_recorded:
        status = 503
    elif not failed:
        status = 200
    elif referenced:
        status = 202
    else:
        status = 409
    kinds = list(accepted.values())
    return StoreResult(
        status=status,
        body=body,
        warnings=_warnings(reasons),
        stored=kinds.count("stored"),
        duplicate=kinds.count("duplicate"),
        failed=len(failed),
    )


def _sop_item(identity: PartIdentity) -> dict[str, Any]:
    """A sequence item referencing one instance (UIDs left empty when unknown)."""

    def element(uid: str | None) -> dict[str, Any]:
        return {"vr": "UI", "Value": [uid]} if uid else {"vr": "UI"}

    return {
        _REFERENCED_SOP_CLASS: element(identity.sop_class_uid),
        _REFERENCED_SOP_INSTANCE: element(identity.sop_instance_uid),
    }


def _warnings(reasons: dict[int, str]) -> list[str]:
    """One text per reason: ``parts 2, 5 not accepted (not-dicom): not a DICOM file; ...``."""
    by_reason: dict[str, list[int]] = {}
    for index in sorted(reasons):
        by_reason.setdefault(reasons[index], []).append(index + 1)
    values = []
    for reason, numbers in sorted(by_reason.items()):
        shown = ", ".join(map(str, numbers[:50])) + (" ..." if len(numbers) > 50 else "")
        noun = "part" if len(numbers) == 1 else "parts"
        words = REASON_TEXTS.get(reason, _OTHER_REASON)
        values.append(f"{noun} {shown} not accepted ({reason}): {words}")
    return values


def warning_header(service: str, text: str) -> str:
    """An HTTP Warning value as PS3.18 writes it: ``299 {+service}: <text>``.

    ``service`` is the base URL of the DICOMweb service (the ``{+service}`` of PS3.18),
    e.g. ``https://medai.example.org/dicomweb``. Header values must be Latin-1 and one
    line, so anything else is replaced (the texts are medai's own, this is a safeguard).
    """
    line = f"299 {service}: {text}"
    return "".join(c if " " <= c <= "~" else "?" for c in line)
