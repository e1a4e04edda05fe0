"""One offered input parsed, de-identified and pseudonymized, or the reason it is rejected."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from medai.collection.deid import Deidentifier
from medai.dicom.metadata import InstanceMetadata, normalized_metadata
from medai.dicom.read import parse_instance
from medai.dicom.write import encode_part10
from medai.errors import CannotDeidentify, Rejected

__all__ = ["PreparedInstance", "prepare_or_reject"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedInstance:
    """A de-identified instance ready to be stored and catalogued."""

    data: bytes
    patient_pseudonym: str
    study_uid: str
    series_uid: str
    sop_uid: str
    metadata: InstanceMetadata
    # Keyed hash of the site's accession number, for label sheets (None when absent).
    accession_key: str | None


def prepare_or_reject(
    data: bytes, site: str, deidentifier: Deidentifier, max_bytes: int
) -> PreparedInstance | Rejected:
    """The de-identified instance of ``data`` (sent by ``site``), or why it is rejected.

    Never raises for a bad input: a file that breaks a library in an unforeseen way is
    rejected as :class:`~medai.errors.CannotDeidentify`, naming only the exception's type.
    """
    try:
        return _prepare(data, site, deidentifier, max_bytes)
    except Rejected as exc:
        return exc
    except Exception as exc:  # real-world files break libraries in odd ways
        # The exception text may quote values from the file, so only its type is kept
        # outside the quarantine.
        logger.warning("unexpected %s while de-identifying an input", type(exc).__name__)
        return CannotDeidentify(
            f"unexpected {type(exc).__name__} while reading or de-identifying the file"
        )


def _prepare(
    data: bytes, site: str, deidentifier: Deidentifier, max_bytes: int
) -> PreparedInstance:
    ds = parse_instance(data, max_bytes=max_bytes)
    # Read before de-identification removes it; only its keyed hash is kept.
    accession = str(ds.get("AccessionNumber", "") or "").strip(" \x00")
    accession_key = deidentifier.pseudonymizer.accession_key(site, accession) if accession else None
    ds = deidentifier.deidentify(ds)
    return PreparedInstance(
        data=encode_part10(ds),
        patient_pseudonym=str(ds.PatientID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        metadata=normalized_metadata(ds),
        accession_key=accession_key,
    )
