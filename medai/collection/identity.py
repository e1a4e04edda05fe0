"""Who an instance's patient is: the issuer of its PatientID, per site and per file.

The patient pseudonym keys on (issuer, PatientID). The issuer is IssuerOfPatientID (0010,0021)
when the file has one, else the issuer the campaign gives the sending site (its id unless it
declares another, see :class:`~medai.collection.campaign.definition.SiteDefinition`).

A catalog set up before migration 0006 holds patients pseudonymized from the PatientID alone
(scheme ``v1``). A site's new data for such a patient keeps that pseudonym and date offset
(issuer None), so it is never split from what the site sent before the upgrade.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import select

from medai.catalog.models import Patient, Site, Study
from medai.collection.pseudonymize import Pseudonymizer, normalize_issuer

if TYPE_CHECKING:
    from pydicom import Dataset
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["PatientIdentities", "patient_id_of"]

_PATIENT_ID = 0x00100020
_ISSUER_OF_PATIENT_ID = 0x00100021


def _text(ds: Dataset, tag: int) -> str:
    elem = ds.get(tag)
    value = elem.value if elem is not None else None
    return str(value).strip(" \x00") if value else ""


def patient_id_of(ds: Dataset) -> str:
    """The dataset's PatientID, padding stripped (``""`` when absent)."""
    return _text(ds, _PATIENT_ID)


class PatientIdentities:
    """Resolves the issuer each instance's patient pseudonym keys on.

    Parameters
    ----------
    sessions
        Read sessions on the catalog (the sites' issuers, the patients from before 0006).
    pseudonymizer
        The campaign's pseudonymizer (for the ``v1`` pseudonyms of those patients).
    """

    def __init__(self, sessions: sessionmaker[Session], pseudonymizer: Pseudonymizer) -> None:
        self._sessions = sessions
        self._pseudo = pseudonymizer
        self._site_issuers: dict[str, str] = {}
        self._has_legacy: bool | None = None
        # Bounded: a long import meets each (site, patient) many times, memory stays flat.
        self._legacy_cached = lru_cache(maxsize=8192)(self._legacy)

    def issuer(self, ds: Dataset, site: str) -> str | None:
        """The issuer of ``ds``'s PatientID, sent by ``site`` (None: the ``v1`` scheme).

        Returns
        -------
        str or None
            The normalized IssuerOfPatientID, else the site's issuer; None when the catalog
            holds this site's patient under its pre-0006 pseudonym.
        """
        patient_id = patient_id_of(ds)
        if patient_id and self._legacy_present() and self._legacy_cached(site, patient_id):
            return None
        in_file = _text(ds, _ISSUER_OF_PATIENT_ID)
        return normalize_issuer(in_file) if in_file else self.site_issuer(site)

    def site_issuer(self, site: str) -> str:
        """The issuer the campaign gives ``site`` (its id, upper case, unless declared)."""
        if site not in self._site_issuers:
            with self._sessions() as session:
                self._site_issuers = {
                    row.id: row.issuer or normalize_issuer(row.id)
                    for row in session.scalars(select(Site))
                }
        # A site unknown to the catalog is refused by the pipeline before this is asked.
        return self._site_issuers.get(site, normalize_issuer(site))

    def _legacy_present(self) -> bool:
        # Only migration 0006 marks patients v1, so once absent they never appear.
        if self._has_legacy is None:
            with self._sessions() as session:
                found = session.scalar(select(Patient.id).where(Patient.scheme == "v1").limit(1))
            self._has_legacy = found is not None
        return self._has_legacy

    def _legacy(self, site: str, patient_id: str) -> bool:
        # Scoped to the sites that sent the patient: another site's equal ID is not linked
        # (under v1 it would have been, which is the defect the issuer fixes).
        legacy = self._pseudo.patient_pseudonym(None, patient_id)
        with self._sessions() as session:
            found = session.scalar(
                select(Study.id)
                .join(Patient, Patient.id == Study.patient_id)
                .where(
                    Patient.pseudonym == legacy,
                    Patient.scheme == "v1",
                    Study.site_id == site,
                )
                .limit(1)
            )
        return found is not None
