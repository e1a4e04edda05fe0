"""Keyed deterministic pseudonyms for patients, UIDs and dates (HMAC-SHA256, campaign key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import lru_cache

# The key file itself lives below collection (serving reads keys too); re-exported here
# for the receivers that load the campaign key next to their pseudonymizer.
from medai.keyfile import KEY_BYTES, create_key_file, load_key

__all__ = [
    "KEY_BYTES",
    "PSEUDONYM_SCHEME",
    "Pseudonymizer",
    "create_key_file",
    "load_key",
    "normalize_issuer",
]

_MAX_OFFSET_DAYS = 3650

# Each use of the key hashes under its own label, so a patient pseudonym can never equal
# (or help to predict) a UID or a date offset computed from the same input string.
# v2: the patient is (issuer, PatientID), not the PatientID alone (migration 0006).
_DOMAIN_PATIENT = b"medai/v2/patient\x00"
_DOMAIN_DATE = b"medai/v2/date-offset\x00"
_DOMAIN_UID = b"medai/v1/uid\x00"
_DOMAIN_ACCESSION = b"medai/v1/accession\x00"
_DOMAIN_LOCAL_PATIENT = b"medai/v2/site-patient\x00"
_DOMAIN_PIXELS = b"medai/v2/pixels\x00"
# The ID-only derivations of catalogs set up before migration 0006 (issuer None): their
# patients keep them, so what their sites send later joins what was stored before.
_DOMAIN_PATIENT_V1 = b"medai/v1/patient-id\x00"
_DOMAIN_DATE_V1 = b"medai/v1/date-offset\x00"

PSEUDONYM_SCHEME = "v2"
"""The patient pseudonym derivation in use; catalogs record it per patient (``v1`` legacy)."""


class Pseudonymizer:
    """Deterministic pseudonyms derived from one campaign key.

    The same input always gives the same output under the same key, from any site and on
    any machine, so re-sent or overlapping data lands on the same pseudonymous patient,
    study and instance. Without the key the mapping can neither be reversed nor recomputed.

    Parameters
    ----------
    key
        The campaign key (see :func:`load_key`); at least 16 bytes.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonymization key must be at least 16 bytes long")
        self._key = bytes(key)
        # Bounded caches: the same study/series UIDs recur in every instance of a series,
        # while memory must stay flat over a long import.
        self._uid_cached = lru_cache(maxsize=16384)(self._uid)
        self._patient_cached = lru_cache(maxsize=4096)(self._patient)
        self._offset_cached = lru_cache(maxsize=4096)(self._offset)

    def _mac(self, domain: bytes, value: str) -> bytes:
        return hmac.new(self._key, domain + value.encode("utf-8"), hashlib.sha256).digest()

    def patient_pseudonym(self, issuer: str | None, patient_id: str) -> str:
        """The pseudonym that replaces PatientID and PatientName.

        A patient is known by the issuer of the ID and the ID: ``1001`` of one hospital and
        ``1001`` of another are two patients unless both declare the same issuer.

        Parameters
        ----------
        issuer
            Who assigned ``patient_id``: IssuerOfPatientID, else the sending site's issuer
            (see :func:`normalize_issuer`; spaces and case are ignored). None: the ID
            alone (scheme ``v1``), for a patient catalogued before migration 0006.
        patient_id
            The original PatientID (surrounding spaces and NUL padding are ignored).

        Returns
        -------
        str
            ``"P"`` followed by 16 base32 characters (80 bits), valid as LO, SH and PN.
        """
        return self._patient_cached(issuer is None, _identity(issuer, patient_id))

    def _patient(self, legacy: bool, identity: str) -> str:
        digest = self._mac(_DOMAIN_PATIENT_V1 if legacy else _DOMAIN_PATIENT, identity)
        return "P" + base64.b32encode(digest[:10]).decode("ascii")

    def site_patient_key(self, site: str, patient_id: str) -> str:
        """The keyed hash of a site's local PatientID, as its label sheets write it.

        A sheet knows the site's own ID but not the issuer its images carry; the study
        keeps this hash, so the sheet's patient check needs no issuer.

        Returns
        -------
        str
            32 hex digits (128 bits).
        """
        value = site + "\x00" + _normalize(patient_id)
        return self._mac(_DOMAIN_LOCAL_PATIENT, value)[:16].hex()

    def pixel_hasher(self) -> hmac.HMAC:
        """A keyed hash to feed decoded pixels to (recognises re-sent images).

        Keyed, so that someone holding an image cannot test whether the catalog has it.
        """
        return hmac.new(self._key, _DOMAIN_PIXELS, hashlib.sha256)

    def uid(self, uid: str) -> str:
        """The pseudonymous UID that replaces ``uid``.

        Parameters
        ----------
        uid
            The original UID (surrounding spaces and NUL padding are ignored).

        Returns
        -------
        str
            ``"2.25."`` followed by the decimal value of an RFC 9562 version-8 UUID built
            from the keyed hash: at most 44 characters, digits and dots only.
        """
        return self._uid_cached(_normalize(uid))

    def _uid(self, uid: str) -> str:
        raw = bytearray(self._mac(_DOMAIN_UID, uid)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom (here: keyed hash) UUID
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def accession_key(self, site: str, accession_number: str) -> str:
        """The keyed hash that links a site's accession number to its study.

        Accession numbers are unique only within one hospital, so the site is part of
        the hashed value. The ingest pipeline records it on the study (the number
        itself is removed by the profile) and label import computes it from the
        sheet, so the two meet without the number ever being stored.

        Parameters
        ----------
        site
            The campaign site id.
        accession_number
            The original AccessionNumber (surrounding spaces and NUL padding ignored).

        Returns
        -------
        str
            32 hex digits (128 bits).
        """
        value = site + "\x00" + _normalize(accession_number)
        return self._mac(_DOMAIN_ACCESSION, value)[:16].hex()

    def date_offset_days(self, issuer: str | None, patient_id: str) -> int:
        """Days to add to every date of one patient; intervals between dates survive.

        Parameters
        ----------
        issuer, patient_id
            The patient, as for :meth:`patient_pseudonym` (the offset follows the pseudonym).

        Returns
        -------
        int
            A per-patient offset between -3650 and -1 (always into the past).
        """
        return self._offset_cached(issuer is None, _identity(issuer, patient_id))

    def _offset(self, legacy: bool, identity: str) -> int:
        digest = self._mac(_DOMAIN_DATE_V1 if legacy else _DOMAIN_DATE, identity)
        return -(1 + int.from_bytes(digest[:8], "big") % _MAX_OFFSET_DAYS)


def normalize_issuer(issuer: str) -> str:
    """An issuer of patient IDs as compared: padding stripped, upper case.

    ``"Hospital A "`` and ``"HOSPITAL A"`` name the same issuer.
    """
    return _normalize(issuer).upper()


def _identity(issuer: str | None, patient_id: str) -> str:
    if issuer is None:
        return _normalize(patient_id)  # v1: exactly the input those pseudonyms were made of
    # Length-prefixed, so no (issuer, id) pair can hash like another: ("A1", "23") and
    # ("A", "123") differ although their concatenations do not.
    issuer = normalize_issuer(issuer)
    return f"{len(issuer)}:{issuer}\x00{_normalize(patient_id)}"


def _normalize(value: str) -> str:
    return str(value).strip(" \x00")
