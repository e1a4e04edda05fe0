"""One offered input parsed, de-identified and pseudonymized, or the reason it is rejected."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from medai.collection.deid import Deidentifier
from medai.collection.edge_screen import EdgeScreen
from medai.collection.identity import PatientIdentities, patient_id_of
from medai.collection.pixel_hash import PixelHashStatus, pixel_hash
from medai.dicom.inflate import DEFAULT_MAX_RATIO
from medai.dicom.metadata import InstanceMetadata, normalized_metadata
from medai.dicom.read import parse_instance
from medai.dicom.write import encode_part10
from medai.errors import CannotDeidentify, Rejected

__all__ = ["PreparedInstance", "prepare_edge_or_reject", "prepare_or_reject"]

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
    # Keyed hash of the site's own PatientID, for the label sheets' patient check.
    patient_key: str | None = None
    # Keyed hash of the decoded pixels (None: see pixel_hash_status), to recognise re-sends.
    pixel_hash: str | None = None
    pixel_hash_status: PixelHashStatus = "no-pixels"


def prepare_or_reject(
    data: bytes,
    site: str,
    deidentifier: Deidentifier,
    max_bytes: int,
    identities: PatientIdentities,
    *,
    max_inflate_ratio: float = DEFAULT_MAX_RATIO,
) -> PreparedInstance | Rejected:
    """The de-identified instance of ``data`` (sent by ``site``), or why it is rejected.

    ``identities`` says which issuer the patient pseudonym keys on. Never raises for a bad
    input: a file that breaks a library in an unforeseen way is rejected as
    :class:`~medai.errors.CannotDeidentify`, naming only the exception's type.
    """
    try:
        return _prepare(data, site, deidentifier, max_bytes, identities, max_inflate_ratio)
    except Rejected as exc:
        return exc
    except Exception as exc:  # real-world files break libraries in odd ways
        # The exception text may quote values from the file, so only its type is kept
        # outside the quarantine.
        logger.warning("unexpected %s while de-identifying an input", type(exc).__name__)
        return CannotDeidentify(
            f"unexpected {type(exc).__name__} while reading or de-identifying the file"
        )


def prepare_edge_or_reject(
    data: bytes,
    screen: EdgeScreen,
    deidentifier: Deidentifier,
    max_bytes: int,
    *,
    max_inflate_ratio: float = DEFAULT_MAX_RATIO,
) -> PreparedInstance | Rejected:
    """An instance an edge gateway de-identified, as received, or why it is rejected.

    Not de-identified again (that would change its UIDs, which are its identity): parsed,
    re-screened by ``screen`` (:class:`~medai.errors.EdgeNotDeidentified`,
    :class:`~medai.errors.EdgeIdentified`), and kept byte for byte. Its accession and
    site patient keys are unknown at the centre (the edge removed what they hash), so
    label sheets find such studies by their pseudonymized UIDs only. Never raises for a
    bad input, as :func:`prepare_or_reject`.
    """
    try:
        ds = parse_instance(data, max_bytes=max_bytes, max_inflate_ratio=max_inflate_ratio)
        screen.screen(ds)
        digest, status = pixel_hash(ds, deidentifier.pseudonymizer.pixel_hasher())
        return PreparedInstance(
            data=data,
            patient_pseudonym=str(ds.PatientID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            metadata=normalized_metadata(ds),
            accession_key=None,
            patient_key=None,
            pixel_hash=digest,
            pixel_hash_status=status,
        )
    except Rejected as exc:
        return exc
    except Exception as exc:  # as in prepare_or_reject: only the exception's type is kept
        logger.warning("unexpected %s while screening an edge input", type(exc).__name__)
        return CannotDeidentify(
            f"unexpected {type(exc).__name__} while reading or screening the file"
        )


def _prepare(
    data: bytes,
    site: str,
    deidentifier: Deidentifier,
    max_bytes: int,
    identities: PatientIdentities,
    max_inflate_ratio: float,
) -> PreparedInstance:
    ds = parse_instance(data, max_bytes=max_bytes, max_inflate_ratio=max_inflate_ratio)
    pseudonymizer = deidentifier.pseudonymizer
    # Read before de-identification removes them; only keyed hashes are kept.
    accession = str(ds.get("AccessionNumber", "") or "").strip(" \x00")
    accession_key = pseudonymizer.accession_key(site, accession) if accession else None
    patient_id = patient_id_of(ds)
    patient_key = pseudonymizer.site_patient_key(site, patient_id) if patient_id else None
    issuer = identities.issuer(ds, site)
    ds = deidentifier.deidentify(ds, issuer=issuer)
    # After de-identification: the pixels as stored (overlay bits cleared, as in the store).
    digest, status = pixel_hash(ds, pseudonymizer.pixel_hasher())
    return PreparedInstance(
        data=encode_part10(ds),
        patient_pseudonym=str(ds.PatientID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        metadata=normalized_metadata(ds),
        accession_key=accession_key,
        patient_key=patient_key,
        pixel_hash=digest,
        pixel_hash_status=status,
    )
