"""Recording an ingest batch in the catalog: rows, events, counters and audit in one transaction."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update

from medai.audit import AuditEntry, append_audit_many, audited_transaction
from medai.catalog.models import (
    EdgeReceipt,
    IngestEvent,
    Instance,
    Patient,
    QuarantineEntry,
    Series,
    Study,
)
from medai.catalog.writes import get_or_create_id, insert_ignore
from medai.collection.counters import ProgressCounters
from medai.collection.outcomes import Offer, Outcome, OutcomeKind
from medai.collection.prepare import PreparedInstance
from medai.collection.quarantine import QuarantinedFile
from medai.errors import Rejected

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["CatalogWriter"]

logger = logging.getLogger(__name__)

# Ids of patients/studies/series already committed, kept per process (bounded).
_ID_CACHE_LIMIT = 200_000


class CatalogWriter:
    """Writes each ingest batch's catalog records in one transaction, after its files.

    Keeps the ids of the patients, studies and series it has committed, so that a long
    import does not look each of them up again.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._ids: dict[tuple[str, str], int] = {}

    def commit(
        self,
        offers: Sequence[Offer],
        steps: Sequence[PreparedInstance | Rejected],
        kept: Sequence[str | QuarantinedFile | None],
        *,
        actor: str,
        clock: Callable[[], dt.datetime],
    ) -> list[Outcome]:
        """One catalog transaction for the batch: rows, ingest events, counters, audit records.

        ``kept[i]`` is where offer *i*'s bytes already lie durably: its store key, its
        quarantined file, or None for an instance catalogued before this batch. ``clock``
        gives the time instances count as received at.
        """
        outcomes: list[Outcome] = []
        # (SOPInstanceUID, pixel hash, index of its audit entry) of each instance stored now.
        hashed: list[tuple[str, str, int]] = []
        new_ids: dict[tuple[str, str], int] = {}
        touched_studies: set[int] = set()
        # (SOPInstanceUID, site, receipt day) of each instance an edge forwarded and the
        # centre now holds (stored or duplicate): its EdgeReceipt, in this transaction.
        receipts: list[tuple[str, str, dt.date]] = []
        counters = ProgressCounters(clock().date())
        with audited_transaction(self._sessions) as session:
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
                        session, offer, step, file, new_ids, counters, clock()
                    )
                    if outcome.kind == "stored":
                        touched_studies.add(study_id)
                        counters.add_instance(offer.site, step.metadata, len(step.data))
                        if step.pixel_hash is not None:
                            hashed.append((step.sop_uid, step.pixel_hash, len(audit)))
                outcomes.append(outcome)
                if (
                    offer.edge_receipt_day is not None
                    and outcome.kind != "quarantined"
                    and outcome.sop_instance_uid is not None
                ):
                    receipts.append((outcome.sop_instance_uid, offer.site, offer.edge_receipt_day))
                events.append(
                    {
                        "run_id": offer.run_id,
                        "site_id": offer.site,
                        "source": offer.source,
                        "outcome": outcome.kind,
                        "sop_instance_uid": outcome.sop_instance_uid,
                        "quarantine_id": quarantine_id,
                        "at": clock(),
                    }
                )
                details: dict[str, object] = {
                    "site": offer.site,
                    "source": offer.source,
                    "run_id": offer.run_id,
                }
                if outcome.reason_code:
                    details["reason_code"] = outcome.reason_code
                if offer.edge_receipt_day is not None:
                    details["edge_receipt_day"] = offer.edge_receipt_day.isoformat()
                subject = file.sha256 if isinstance(file, QuarantinedFile) else None
                audit.append(
                    AuditEntry(
                        actor,
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
                    .values(last_received_at=clock(), completed_at=None)
                )
            counters.write(session)
            _record_edge_receipts(session, receipts)
            for index, first in _record_resends(session, hashed).items():
                entry = audit[index]
                details = {**(entry.details or {}), "resend_of": first}
                audit[index] = AuditEntry(entry.actor, entry.action, entry.subject, details)
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
        prepared: PreparedInstance,
        store_key: str,
        new_ids: dict[tuple[str, str], int],
        counters: ProgressCounters,
        received_at: dt.datetime,
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
            "patient_key": prepared.patient_key,
        }
        study_id = self._id(
            session,
            Study,
            "study_uid",
            study_values,
            new_ids,
            on_create=lambda: counters.add_study(offer.site, meta),
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
                received_at=received_at,
                pixel_hash=prepared.pixel_hash,
                pixel_hash_status=prepared.pixel_hash_status,
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


def _record_edge_receipts(session: Session, receipts: Sequence[tuple[str, str, dt.date]]) -> None:
    """Insert-or-ignore an EdgeReceipt for each (SOPInstanceUID, site, receipt day).

    An instance keeps the first receipt recorded for it: a re-send is the same instance.
    """
    if not receipts:
        return
    ids = {
        row.sop_instance_uid: row.id
        for row in session.execute(
            select(Instance.sop_instance_uid, Instance.id).where(
                Instance.sop_instance_uid.in_(sorted({uid for uid, _, _ in receipts}))
            )
        )
    }
    for sop_uid, site, day in receipts:
        instance_id = ids.get(sop_uid)
        if instance_id is not None:  # always: stored now, or catalogued before
            session.execute(
                insert_ignore(EdgeReceipt, instance_id=instance_id, site_id=site, receipt_day=day)
            )


def _record_resends(session: Session, hashed: Sequence[tuple[str, str, int]]) -> dict[int, str]:
    """Mark the instances just stored whose pixels an earlier instance already has.

    ``hashed`` holds each stored instance's SOPInstanceUID, pixel hash and audit entry
    index. The first instance catalogued with a hash (lowest id) is the original; every
    later one is recorded as its re-send. Returns ``{audit index: original's UID}``.
    """
    if not hashed:
        return {}
    first: dict[str, tuple[int, str]] = {}
    ids: dict[str, int] = {}
    for row_id, sop_uid, digest in session.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.pixel_hash)
        .where(Instance.pixel_hash.in_(sorted({digest for _, digest, _ in hashed})))
        .order_by(Instance.id)
    ):
        if digest is not None:  # always: selected by hash (for the type checker)
            first.setdefault(digest, (row_id, sop_uid))
        ids[sop_uid] = row_id
    resends: dict[int, str] = {}
    updates: list[dict[str, object]] = []
    for sop_uid, digest, index in hashed:
        original_id, original_uid = first[digest]
        if ids[sop_uid] != original_id:
            updates.append({"id": ids[sop_uid], "resend_of_instance_id": original_id})
            resends[index] = original_uid
    if updates:
        session.execute(update(Instance), updates)
        # Counts only: the UIDs are in the audit records, the pixels nowhere but the store.
        logger.info("%d instance(s) re-sent: pixels identical to earlier ones", len(updates))
    return resends
