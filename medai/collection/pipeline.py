"""The ingest pipeline: every offered DICOM instance ends stored, duplicate or quarantined.

parse & validate → de-identify → pseudonymize → dedupe on the pseudonymized
SOPInstanceUID → write the de-identified bytes to the store → one catalog
transaction (patient/study/series/instance rows, the ingest event, the audit
record). The store write comes before the commit, so a crash leaves at most an
unreferenced store file (collected by ``medai collect verify --collect``), never
a row without its file; re-sending anything is harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.exc import OperationalError

from medai.audit import AuditEntry, append_audit_many, lock_audit_chain
from medai.catalog.db import (
    add_to_counters,
    create_engine_for,
    get_or_create_id,
    insert_ignore,
    session_factory,
)
from medai.catalog.models import (
    IngestEvent,
    Instance,
    Patient,
    ProgressCount,
    QuarantineEntry,
    Series,
    Site,
    Study,
    utcnow,
)
from medai.collection.campaign.definition import get_site, stored_campaign
from medai.collection.deid import Deidentifier
from medai.collection.pseudonymize import Pseudonymizer, load_key
from medai.collection.quarantine import Quarantine, QuarantinedFile
from medai.config import Settings, get_settings
from medai.dicom.metadata import InstanceMetadata, normalized_metadata
from medai.dicom.read import parse_instance
from medai.dicom.write import encode_part10
from medai.errors import CannotDeidentify, Rejected
from medai.store import ObjectStore

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["IngestPipeline", "Offer", "Outcome", "OutcomeCounts", "OutcomeKind"]

logger = logging.getLogger(__name__)

OutcomeKind = Literal["stored", "duplicate", "quarantined"]
_COMMIT_ATTEMPTS = 3
# Ids of patients/studies/series already committed, kept per process (bounded).
_ID_CACHE_LIMIT = 200_000


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


@dataclass(kw_only=True)
class OutcomeCounts:
    """How many offered inputs ended stored, duplicate and quarantined (by reason code).

    The tally every receiver keeps for its summary; subclass it for a run's other figures.
    """

    stored: int = 0
    duplicate: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    @property
    def accounted(self) -> int:
        """Inputs with an outcome: stored + duplicate + quarantined."""
        return self.stored + self.duplicate + sum(self.quarantined.values())

    def add(self, outcome: Outcome) -> None:
        if outcome.kind == "stored":
            self.stored += 1
        elif outcome.kind == "duplicate":
            self.duplicate += 1
        else:
            self.quarantined[outcome.reason_code or "unknown"] += 1


@dataclass(frozen=True)
class Offer:
    """One input offered by a receiver, with where it came from."""

    data: bytes
    site: str
    source: str
    run_id: int | None = None
    original_name: str | None = None
    # Set when the receiver itself could not take the input (unreadable, too large).
    rejected: Rejected | None = None


@dataclass(frozen=True)
class _Prepared:
    """A de-identified instance ready to be stored and catalogued."""

    data: bytes
    patient_pseudonym: str
    study_uid: str
    series_uid: str
    sop_uid: str
    metadata: InstanceMetadata
    # Keyed hash of the site's accession number, for label sheets (None when absent).
    accession_key: str | None


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
    actor
        Who the audit records name.
    clock
        The time an instance is received at (UTC); the wall clock unless simulating.
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
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.store = store
        self.quarantine = quarantine
        self.deidentifier = deidentifier
        self.max_instance_bytes = max_instance_bytes
        self.actor = actor
        # When an instance counts as received (catalog rows, events, progress day). Always
        # the wall clock but in a simulation (``medai demo`` replays a campaign's past days);
        # audit records keep the real time.
        self.clock = clock
        self._sessions: sessionmaker[Session] = session_factory(engine)
        # Reads need no write lock (SQLite otherwise begins every transaction IMMEDIATE).
        self._read_sessions: sessionmaker[Session] = session_factory(
            engine.execution_options(sqlite_begin="DEFERRED")
        )
        self._known_sites: set[str] = set()
        self._ids: dict[tuple[str, str], int] = {}

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
        settings = settings or get_settings()
        engine = create_engine_for(settings.resolved_database_url)
        with session_factory(engine)() as session:
            options = stored_campaign(session).deidentification.to_deid_options()
        pseudonymizer = Pseudonymizer(load_key(settings.resolved_key_file))
        return cls(
            engine=engine,
            store=ObjectStore(settings.resolved_store_dir),
            quarantine=Quarantine(settings.resolved_quarantine_dir),
            deidentifier=Deidentifier(options, pseudonymizer),
            max_instance_bytes=settings.max_instance_bytes,
        )

    # -- public operations ----------------------------------------------------------

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
        return self.ingest_many([Offer(data, site, source, run_id, original_name)])[0]

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
        offer = Offer(data, site, source, run_id, original_name, rejected=reason)
        return self.ingest_many([offer])[0]

    def ingest_many(self, offers: Sequence[Offer]) -> list[Outcome]:
        """Offer several inputs at once; outcomes come back in the same order.

        Each input is handled exactly as :meth:`ingest` would, but the catalog
        records of the whole batch are committed in one transaction (after all
        their store writes), which is what makes bulk imports fast. A crash
        before the commit records none of the batch: re-offering it is harmless.

        Raises
        ------
        UnknownSite
            When any offer names a site the campaign does not have (nothing is recorded).
        """
        for offer in offers:
            self.check_site(offer.site)
        steps: list[_Prepared | Rejected] = [
            offer.rejected
            if offer.rejected is not None
            else self._prepare_or_reject(offer.data, offer.site)
            for offer in offers
        ]
        already = self._catalogued([step.sop_uid for step in steps if isinstance(step, _Prepared)])
        # Durable files first (store for accepted, quarantine for rejected), then the rows.
        to_store = [
            step.data
            for step in steps
            if isinstance(step, _Prepared) and step.sop_uid not in already
        ]
        stored_keys = iter(self.store.put_many(to_store))
        kept: list[str | QuarantinedFile | None] = []
        for offer, step in zip(offers, steps, strict=True):
            if isinstance(step, Rejected):
                kept.append(
                    self.quarantine.put(
                        offer.data,
                        reason=step,
                        site=offer.site,
                        source=offer.source,
                        original_name=offer.original_name,
                    )
                )
            elif step.sop_uid in already:
                kept.append(None)
            else:
                kept.append(next(stored_keys))
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                return self._commit(offers, steps, kept)
            except OperationalError as exc:
                # Deadlock victims and lock time-outs roll back whole: the files are
                # already durable, so the batch's rows can simply be written again.
                if attempt == _COMMIT_ATTEMPTS:
                    raise
                logger.warning("catalog commit failed (%s); retrying", type(exc.orig).__name__)
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def check_site(self, site: str) -> None:
        """Raise :class:`UnknownSite` unless ``site`` is one of the campaign's sites."""
        if site in self._known_sites:
            return
        with self._read_sessions() as session:
            self._known_sites = set(session.scalars(select(Site.id)))
            if site not in self._known_sites:
                get_site(session, site)  # raises UnknownSite naming the campaign's sites

    # -- steps ----------------------------------------------------------------------

    def _prepare_or_reject(self, data: bytes, site: str) -> _Prepared | Rejected:
        try:
            return self._prepare(data, site)
        except Rejected as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - real-world files break libraries in odd ways
            # The exception text may quote values from the file, so only its type is kept
            # outside the quarantine.
            logger.warning("unexpected %s while de-identifying an input", type(exc).__name__)
            return CannotDeidentify(
                f"unexpected {type(exc).__name__} while reading or de-identifying the file"
            )

    def _prepare(self, data: bytes, site: str) -> _Prepared:
        ds = parse_instance(data, max_bytes=self.max_instance_bytes)
        # Read before de-identification removes it; only its keyed hash is kept.
        accession = str(ds.get("AccessionNumber", "") or "").strip(" \x00")
        accession_key = (
            self.deidentifier.pseudonymizer.accession_key(site, accession) if accession else None
        )
        ds = self.deidentifier.deidentify(ds)
        return _Prepared(
            data=encode_part10(ds),
            patient_pseudonym=str(ds.PatientID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            metadata=normalized_metadata(ds),
            accession_key=accession_key,
        )

    def _catalogued(self, sop_uids: list[str]) -> set[str]:
        if not sop_uids:
            return set()
        with self._read_sessions() as session:
            return set(
                session.scalars(
                    select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(sop_uids))
                )
            )

    def _commit(
        self,
        offers: Sequence[Offer],
        steps: Sequence[_Prepared | Rejected],
        kept: Sequence[str | QuarantinedFile | None],
    ) -> list[Outcome]:
        """One catalog transaction for the batch: rows, ingest events, audit records."""
        outcomes: list[Outcome] = []
        new_ids: dict[tuple[str, str], int] = {}
        touched_studies: set[int] = set()
        counters = _ProgressCounters(self.clock().date())
        with self._sessions.begin() as session:
            lock_audit_chain(session)  # before any row: see lock_audit_chain
            events: list[dict[str, object]] = []
            audit: list[AuditEntry] = []
            for offer, step, file in zip(offers, steps, kept, strict=True):
                quarantine_id = None
                if isinstance(step, Rejected):
                    assert isinstance(file, QuarantinedFile)
                    quarantine_id = self._quarantine_row(session, offer, step, file)
                    outcome = Outcome.quarantined(step.reason_code, str(step))
                elif file is None:
                    outcome = Outcome("duplicate", step.sop_uid)
                else:
                    assert isinstance(file, str)
                    outcome, study_id = self._catalogue_rows(
                        session, offer, step, file, new_ids, counters
                    )
                    if outcome.kind == "stored":
                        touched_studies.add(study_id)
                        counters.add_instance(offer.site, step)
                outcomes.append(outcome)
                events.append(
                    {
                        "run_id": offer.run_id,
                        "site_id": offer.site,
                        "source": offer.source,
                        "outcome": outcome.kind,
                        "sop_instance_uid": outcome.sop_instance_uid,
                        "quarantine_id": quarantine_id,
                        "at": self.clock(),
                    }
                )
                details: dict[str, object] = {
                    "site": offer.site,
                    "source": offer.source,
                    "run_id": offer.run_id,
                }
                if outcome.reason_code:
                    details["reason_code"] = outcome.reason_code
                subject = file.sha256 if isinstance(file, QuarantinedFile) else None
                audit.append(
                    AuditEntry(
                        self.actor,
                        f"ingest.{outcome.kind}",
                        subject or outcome.sop_instance_uid,
                        details,
                    )
                )
            session.execute(insert(IngestEvent), events)
            if touched_studies:
                # A new instance restarts the study's quiet period (and reopens it if it
                # had been marked complete): see medai.collection.receivers.study_completion.
                session.execute(
                    update(Study)
                    .where(Study.id.in_(sorted(touched_studies)))
                    .values(last_received_at=self.clock(), completed_at=None)
                )
            add_to_counters(session, ProgressCount, _ProgressCounters.KEY, counters.rows())
            append_audit_many(session, audit)
        # Only ids of committed rows may be reused by later batches.
        if len(self._ids) > _ID_CACHE_LIMIT:
            self._ids.clear()
        self._ids.update(new_ids)
        for outcome in outcomes:
            if outcome.kind == "quarantined":
                logger.info("quarantined an input: %s", outcome.reason_code)
            else:
                logger.debug("%s %s", outcome.kind, outcome.sop_instance_uid)
        return outcomes

    def _id(
        self,
        session: Session,
        model: type[Patient | Study | Series],
        column: str,
        values: dict[str, object],
        new_ids: dict[tuple[str, str], int],
        on_create: Callable[[], None] | None = None,
    ) -> int:
        """The row id for a patient/study/series, from the cache or get-or-create.

        ``on_create`` runs when this call inserted the row (not when another
        transaction did), so each row is counted exactly once.
        """
        key = (model.__tablename__, str(values[column]))
        known = self._ids.get(key) or new_ids.get(key)
        if known is None:
            known, created = get_or_create_id(session, model, column, values, return_created=True)
            new_ids[key] = known
            if created and on_create is not None:
                on_create()
        return known

    def _catalogue_rows(
        self,
        session: Session,
        offer: Offer,
        prepared: _Prepared,
        store_key: str,
        new_ids: dict[tuple[str, str], int],
        counters: _ProgressCounters,
    ) -> tuple[Outcome, int]:
        """Insert the instance's rows; returns its outcome and its study's row id."""
        meta = prepared.metadata
        patient_id = self._id(
            session, Patient, "pseudonym", {"pseudonym": prepared.patient_pseudonym}, new_ids
        )
        study_values = {
            "study_uid": prepared.study_uid,
            "patient_id": patient_id,
            "site_id": offer.site,
            "study_date": meta.study_date,
            "modality": meta.modality,
            "body_part": meta.body_part,
            "accession_key": prepared.accession_key,
        }
        study_id = self._id(
            session,
            Study,
            "study_uid",
            study_values,
            new_ids,
            on_create=lambda: counters.add_study(offer.site, prepared),
        )
        series_id = self._id(
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
            new_ids,
        )
        # A concurrent worker (or an earlier offer in this batch) may have catalogued the
        # same instance since the dedupe check: the unique SOPInstanceUID decides.
        inserted = session.execute(
            insert_ignore(
                Instance,
                sop_instance_uid=prepared.sop_uid,
                sop_class_uid=meta.sop_class_uid,
                series_id=series_id,
                site_id=offer.site,
                modality=meta.modality,
                body_part=meta.body_part,
                view_position=meta.view_position,
                manufacturer=meta.manufacturer,
                rows=meta.rows,
                columns=meta.columns,
                number_of_frames=meta.number_of_frames,
                transfer_syntax_uid=meta.transfer_syntax_uid,
                store_key=store_key,
                byte_size=len(prepared.data),
                source=offer.source,
                received_at=self.clock(),
            )
        )
        kind: OutcomeKind = "stored" if inserted.rowcount == 1 else "duplicate"  # type: ignore[attr-defined]
        return Outcome(kind, prepared.sop_uid), study_id

    def _quarantine_row(
        self, session: Session, offer: Offer, reason: Rejected, kept: QuarantinedFile
    ) -> int:
        return get_or_create_id(
            session,
            QuarantineEntry,
            "raw_sha256",
            {
                "raw_sha256": kept.sha256,
                "site_id": offer.site,
                "source": offer.source,
                "reason_code": reason.reason_code,
                "reason": str(reason),
                "relative_path": kept.relative_path,
                "byte_size": kept.byte_size,
            },
        )


class _ProgressCounters:
    """The batch's additions to :class:`ProgressCount`, written in its transaction."""

    KEY = ("site_id", "day", "modality", "body_part")

    def __init__(self, today: dt.date) -> None:
        self._today = today
        self._studies: Counter[tuple[str, str, str]] = Counter()
        self._instances: Counter[tuple[str, str, str]] = Counter()
        self._bytes: Counter[tuple[str, str, str]] = Counter()

    @staticmethod
    def _kind(site: str, prepared: _Prepared) -> tuple[str, str, str]:
        meta = prepared.metadata
        return (site, meta.modality or "", meta.body_part or "")

    def add_study(self, site: str, prepared: _Prepared) -> None:
        self._studies[self._kind(site, prepared)] += 1

    def add_instance(self, site: str, prepared: _Prepared) -> None:
        kind = self._kind(site, prepared)
        self._instances[kind] += 1
        self._bytes[kind] += len(prepared.data)

    def rows(self) -> list[dict[str, object]]:
        kinds = set(self._studies) | set(self._instances)
        return [
            {
                "site_id": site,
                "day": self._today,
                "modality": modality,
                "body_part": body_part,
                "studies": self._studies[(site, modality, body_part)],
                "instances": self._instances[(site, modality, body_part)],
                "bytes": self._bytes[(site, modality, body_part)],
            }
            for site, modality, body_part in kinds
        ]
