"""The ingest pipeline: every offered DICOM instance ends stored, duplicate or quarantined.

parse & validate → de-identify → pseudonymize → dedupe on the pseudonymized
SOPInstanceUID → write the de-identified bytes to the store → one catalog
transaction (patient/study/series/instance rows, the ingest event, the audit
record). The store write comes before the commit, so a crash leaves at most an
unreferenced store file (collected by ``medai collect verify --collect``), never
a row without its file; re-sending anything is harmless.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pydicom
from sqlalchemy import select

from medai.catalog.db import create_engine_for, get_or_create_id, session_factory
from medai.catalog.models import (
    Campaign,
    IngestEvent,
    Instance,
    Patient,
    QuarantineEntry,
    Series,
    Site,
    Study,
)
from medai.collection.audit import append_audit
from medai.collection.deid import Deidentifier
from medai.collection.pseudonymize import Pseudonymizer, load_key
from medai.collection.quarantine import Quarantine
from medai.config import Settings, get_settings
from medai.dicom.metadata import InstanceMetadata, normalized_metadata
from medai.dicom.read import parse_instance
from medai.errors import CampaignError, CannotDeidentify, Rejected, UnknownSite
from medai.store import ObjectStore

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["IngestPipeline", "Outcome", "OutcomeKind"]

logger = logging.getLogger(__name__)

OutcomeKind = Literal["stored", "duplicate", "quarantined"]


@dataclass(frozen=True)
class Outcome:
    """What became of one offered input. There is no fourth kind."""

    kind: OutcomeKind
    sop_instance_uid: str | None = None
    reason_code: str | None = None
    reason: str | None = None

    @classmethod
    def quarantined(cls, reason_code: str, reason: str) -> Outcome:
        return cls("quarantined", None, reason_code, reason)


@dataclass(frozen=True)
class _Prepared:
    """A de-identified instance ready to be stored and catalogued."""

    data: bytes
    patient_pseudonym: str
    study_uid: str
    series_uid: str
    sop_uid: str
    metadata: InstanceMetadata


class IngestPipeline:
    """Takes raw bytes from any receiver and accounts for every one of them.

    Parameters
    ----------
    engine
        The catalog database (already migrated, with the campaign initialised).
    store, quarantine
        Where de-identified bytes and rejected raw bytes go.
    deidentifier
        The campaign's Annex E de-identifier (with its pseudonymizer).
    max_instance_bytes
        Inputs longer than this are quarantined as too large without parsing.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: ObjectStore,
        quarantine: Quarantine,
        deidentifier: Deidentifier,
        max_instance_bytes: int,
        actor: str = "medai-ingest",
    ) -> None:
        self.engine = engine
        self.store = store
        self.quarantine = quarantine
        self.deidentifier = deidentifier
        self.max_instance_bytes = max_instance_bytes
        self.actor = actor
        self._sessions: sessionmaker[Session] = session_factory(engine)
        # Reads need no write lock (SQLite otherwise begins every transaction IMMEDIATE).
        self._read_sessions: sessionmaker[Session] = session_factory(
            engine.execution_options(sqlite_begin="DEFERRED")
        )
        self._known_sites: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> IngestPipeline:
        """Build the pipeline of the campaign configured in ``settings``.

        Raises
        ------
        CampaignError
            When no campaign has been initialised in the catalog.
        KeyFileError
            When the campaign key file is missing.
        """
        from medai.collection.campaign import CampaignDefinition

        settings = settings or get_settings()
        engine = create_engine_for(settings.resolved_database_url)
        with session_factory(engine)() as session:
            campaign = session.scalars(select(Campaign).order_by(Campaign.id)).first()
        if campaign is None:
            raise CampaignError(
                "no campaign in the catalog at "
                f"{settings.resolved_database_url.split('@')[-1]}: "
                "run `medai campaign init CAMPAIGN.toml` first"
            )
        options = CampaignDefinition.model_validate(
            campaign.definition
        ).deidentification.to_deid_options()
        pseudonymizer = Pseudonymizer(load_key(settings.resolved_key_file))
        return cls(
            engine=engine,
            store=ObjectStore(settings.resolved_store_dir),
            quarantine=Quarantine(settings.resolved_quarantine_dir),
            deidentifier=Deidentifier(options, pseudonymizer),
            max_instance_bytes=settings.max_instance_bytes,
        )

    # -- the one public operation -------------------------------------------------

    def ingest(
        self,
        data: bytes,
        site: str,
        source: str,
        *,
        run_id: int | None = None,
        original_name: str | None = None,
    ) -> Outcome:
        """Offer one input; returns its outcome once it is durably accounted for.

        Parameters
        ----------
        data
            The bytes exactly as received.
        site
            The campaign site id the input came from.
        source
            The receiver: ``folder``, ``c-store``, ``stow-rs``, ``dicomweb-pull`` ...
        run_id
            The import run this input belongs to (for the accounting check).
        original_name
            Where the input came from (a path, a zip member). Kept only in the
            quarantine record, since names may identify the patient.

        Raises
        ------
        UnknownSite
            When ``site`` is not a site of the campaign (nothing is recorded).
        """
        self.check_site(site)
        try:
            prepared = self._prepare(data)
        except Rejected as exc:
            return self._quarantine(data, exc, site, source, run_id, original_name)
        except Exception as exc:  # noqa: BLE001 - real-world files break libraries in odd ways
            # The exception text may quote values from the file, so only its type is kept
            # outside the quarantine.
            logger.warning("unexpected %s while de-identifying an input", type(exc).__name__)
            reason = CannotDeidentify(
                f"unexpected {type(exc).__name__} while reading or de-identifying the file"
            )
            return self._quarantine(data, reason, site, source, run_id, original_name)

        if self._is_catalogued(prepared.sop_uid):
            return self._record_duplicate(prepared.sop_uid, site, source, run_id)
        store_key = self.store.put(prepared.data)
        return self._catalogue(prepared, store_key, site, source, run_id)

    def quarantine_input(
        self,
        data: bytes,
        reason: Rejected,
        site: str,
        source: str,
        *,
        run_id: int | None = None,
        original_name: str | None = None,
    ) -> Outcome:
        """Quarantine an input a receiver rejected before it could be parsed.

        For instance a zip member too large to inflate, or a file that cannot be read.
        """
        self.check_site(site)
        return self._quarantine(data, reason, site, source, run_id, original_name)

    # -- steps ----------------------------------------------------------------------

    def check_site(self, site: str) -> None:
        """Raise :class:`UnknownSite` unless ``site`` is one of the campaign's sites."""
        if site in self._known_sites:
            return
        with self._read_sessions() as session:
            known = set(session.scalars(select(Site.id)))
        self._known_sites = known
        if site not in known:
            listed = ", ".join(sorted(known)) or "none (run `medai campaign init`)"
            raise UnknownSite(f"unknown site {site!r}; the campaign's sites are: {listed}")

    def _prepare(self, data: bytes) -> _Prepared:
        ds = parse_instance(data, max_bytes=self.max_instance_bytes)
        ds = self.deidentifier.deidentify(ds)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return _Prepared(
            data=buffer.getvalue(),
            patient_pseudonym=str(ds.PatientID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            metadata=normalized_metadata(ds),
        )

    def _is_catalogued(self, sop_uid: str) -> bool:
        with self._read_sessions() as session:
            found = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid))
        return found is not None

    def _record_duplicate(
        self, sop_uid: str, site: str, source: str, run_id: int | None
    ) -> Outcome:
        with self._sessions.begin() as session:
            self._event(session, "duplicate", site, source, run_id, sop_uid=sop_uid)
        return Outcome("duplicate", sop_uid)

    def _catalogue(
        self, prepared: _Prepared, store_key: str, site: str, source: str, run_id: int | None
    ) -> Outcome:
        meta = prepared.metadata
        with self._sessions.begin() as session:
            patient_id = get_or_create_id(
                session, Patient, "pseudonym", {"pseudonym": prepared.patient_pseudonym}
            )
            study_id = get_or_create_id(
                session,
                Study,
                "study_uid",
                {
                    "study_uid": prepared.study_uid,
                    "patient_id": patient_id,
                    "site_id": site,
                    "study_date": meta.study_date,
                },
            )
            series_id = get_or_create_id(
                session,
                Series,
                "series_uid",
                {
                    "series_uid": prepared.series_uid,
                    "study_id": study_id,
                    "modality": meta.modality,
                    "body_part": meta.body_part,
                    "series_number": meta.series_number,
                },
            )
            # A concurrent worker may have catalogued the same instance since the
            # dedupe check: the unique SOPInstanceUID decides, and the loser is a duplicate.
            _, created = get_or_create_id(
                session,
                Instance,
                "sop_instance_uid",
                {
                    "sop_instance_uid": prepared.sop_uid,
                    "sop_class_uid": meta.sop_class_uid,
                    "series_id": series_id,
                    "site_id": site,
                    "modality": meta.modality,
                    "body_part": meta.body_part,
                    "view_position": meta.view_position,
                    "manufacturer": meta.manufacturer,
                    "rows": meta.rows,
                    "columns": meta.columns,
                    "number_of_frames": meta.number_of_frames,
                    "transfer_syntax_uid": meta.transfer_syntax_uid,
                    "store_key": store_key,
                    "byte_size": len(prepared.data),
                    "source": source,
                },
                return_created=True,
            )
            kind: OutcomeKind = "stored" if created else "duplicate"
            self._event(session, kind, site, source, run_id, sop_uid=prepared.sop_uid)
        logger.debug("%s %s from %s", kind, prepared.sop_uid, site)
        return Outcome(kind, prepared.sop_uid)

    def _quarantine(
        self,
        data: bytes,
        reason: Rejected,
        site: str,
        source: str,
        run_id: int | None,
        original_name: str | None,
    ) -> Outcome:
        kept = self.quarantine.put(
            data, reason=reason, site=site, source=source, original_name=original_name
        )
        with self._sessions.begin() as session:
            quarantine_id = get_or_create_id(
                session,
                QuarantineEntry,
                "raw_sha256",
                {
                    "raw_sha256": kept.sha256,
                    "site_id": site,
                    "source": source,
                    "reason_code": reason.reason_code,
                    "reason": str(reason),
                    "relative_path": kept.relative_path,
                    "byte_size": kept.byte_size,
                },
            )
            self._event(
                session,
                "quarantined",
                site,
                source,
                run_id,
                quarantine_id=quarantine_id,
                reason_code=reason.reason_code,
                subject=kept.sha256,
            )
        logger.info("quarantined an input from %s: %s", site, reason.reason_code)
        return Outcome.quarantined(reason.reason_code, str(reason))

    def _event(
        self,
        session: Session,
        outcome: OutcomeKind,
        site: str,
        source: str,
        run_id: int | None,
        *,
        sop_uid: str | None = None,
        quarantine_id: int | None = None,
        reason_code: str | None = None,
        subject: str | None = None,
    ) -> None:
        session.add(
            IngestEvent(
                run_id=run_id,
                site_id=site,
                source=source,
                outcome=outcome,
                sop_instance_uid=sop_uid,
                quarantine_id=quarantine_id,
            )
        )
        details: dict[str, object] = {"site": site, "source": source, "run_id": run_id}
        if reason_code:
            details["reason_code"] = reason_code
        append_audit(
            session,
            actor=self.actor,
            action=f"ingest.{outcome}",
            subject=subject or sop_uid,
            details=details,
        )
