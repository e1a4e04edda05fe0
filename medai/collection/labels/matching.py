"""Matching rows to studies' labels (the duplicate and conflict rules) and re-matching kept rows."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, insert, select, union_all, update

from medai.audit import append_audit, lock_audit_chain
from medai.audit.actors import system
from medai.catalog.models import LabelCount, LabelRow, Patient, Study, StudyLabel, utcnow
from medai.catalog.writes import add_to_counters
from medai.collection.labels.rows import (
    CHUNK,
    REF_ACCESSION,
    REF_STUDY_UID,
    RowCounts,
    RowStatus,
    split_findings,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Labeller", "RematchResult", "rematch_labels", "studies_by_ref"]

logger = logging.getLogger(__name__)


@dataclass
class _Label:
    site: str
    value: int
    conflict: bool
    id: int | None = None  # None: added in this transaction
    row_ref: int = 0  # for a new label: the row that set it (see Labeller.write)
    flagged: bool = False  # conflict set in this transaction


class Labeller:
    """Applies rows to studies' labels inside one transaction: the duplicate/conflict rules.

    Rows must be offered in the order they should win: the first value of a label is kept.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._labels: dict[tuple[int, str], _Label] = {}
        self._loaded: set[int] = set()
        self.added = 0
        self.flagged = 0

    def load(self, study_ids: Iterable[int]) -> None:
        """Read the existing labels of these studies (once per study)."""
        wanted = sorted(set(study_ids) - self._loaded)
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            for label in self._session.execute(
                select(
                    StudyLabel.id,
                    StudyLabel.study_id,
                    StudyLabel.site_id,
                    StudyLabel.finding,
                    StudyLabel.value,
                    StudyLabel.conflict,
                ).where(StudyLabel.study_id.in_(chunk))
            ):
                self._labels[(label.study_id, label.finding)] = _Label(
                    label.site_id, label.value, label.conflict, id=label.id
                )
            self._loaded.update(chunk)

    def apply(self, row_ref: int, study_id: int, site: str, findings: dict[str, int]) -> RowStatus:
        """Apply one row's findings to its (loaded) study; returns the row's status."""
        added = conflicting = False
        for finding, value in findings.items():
            label = self._labels.get((study_id, finding))
            if label is None:
                self._labels[(study_id, finding)] = _Label(site, value, False, row_ref=row_ref)
                self.added += 1
                added = True
            elif label.value != value:
                conflicting = True
                if not label.conflict:
                    label.conflict = label.flagged = True
                    self.flagged += 1
        if conflicting:
            return "conflict"
        return "matched" if added else "duplicate"

    def write(self, row_id: Callable[[int], int]) -> None:
        """Insert the new labels and flag the conflicting ones; ``row_id`` maps row refs."""
        now = utcnow()
        new = [
            {
                "study_id": study_id,
                "site_id": label.site,
                "finding": finding,
                "value": label.value,
                "label_row_id": row_id(label.row_ref),
                "conflict": label.conflict,
                "updated_at": now,
            }
            for (study_id, finding), label in self._labels.items()
            if label.id is None
        ]
        flagged = [
            {"id": label.id, "conflict": True, "updated_at": now}
            for label in self._labels.values()
            if label.id is not None and label.flagged
        ]
        for start in range(0, len(new), CHUNK):
            self._session.execute(insert(StudyLabel), new[start : start + CHUNK])
        if flagged:
            self._session.execute(update(StudyLabel), flagged)
        self._count(new)

    def _count(self, new: list[dict[str, Any]]) -> None:
        """Add the new labels to :class:`LabelCount` (conflicts keep the first value)."""
        if not new:
            return
        previously_labelled = {
            study_id for (study_id, _finding), label in self._labels.items() if label.id is not None
        }
        kinds: dict[int, tuple[Any, str, str]] = {}
        study_ids = sorted({row["study_id"] for row in new})
        for start in range(0, len(study_ids), CHUNK):
            chunk = study_ids[start : start + CHUNK]
            for study_id, received, modality, body_part in self._session.execute(
                select(Study.id, Study.first_received_at, Study.modality, Study.body_part).where(
                    Study.id.in_(chunk)
                )
            ):
                kinds[study_id] = (received.date(), modality or "", body_part or "")
        counts: dict[tuple[str, Any, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        newly_labelled: set[int] = set()
        for row in new:
            day, modality, body_part = kinds[row["study_id"]]
            entry = counts[(row["site_id"], day, modality, body_part, row["finding"])]
            entry[0] += 1
            entry[1] += int(row["value"] == 1)
            if row["study_id"] not in previously_labelled and row["study_id"] not in newly_labelled:
                newly_labelled.add(row["study_id"])
                counts[(row["site_id"], day, modality, body_part, "")][0] += 1
        add_to_counters(
            self._session,
            LabelCount,
            ("site_id", "day", "modality", "body_part", "finding"),
            [
                {
                    "site_id": site,
                    "day": day,
                    "modality": modality,
                    "body_part": body_part,
                    "finding": finding,
                    "labelled": labelled,
                    "positives": positives,
                }
                for (site, day, modality, body_part, finding), (labelled, positives) in sorted(
                    counts.items()
                )
            ],
        )


def studies_by_ref(
    session: Session, site: str, kind: str, refs: Sequence[str]
) -> dict[str, tuple[int, str | None, str]]:
    """``ref -> (study id, its patient key, patient pseudonym)`` for the site's studies.

    An accession number may cover several studies; the row goes to the first catalogued.
    """
    column = Study.accession_key if kind == REF_ACCESSION else Study.study_uid
    found: dict[str, tuple[int, str | None, str]] = {}
    for ref, study_id, patient_key, pseudonym in session.execute(
        select(column, Study.id, Study.patient_key, Patient.pseudonym)
        .join(Patient, Patient.id == Study.patient_id)
        .where(Study.site_id == site, column.in_(sorted(set(refs))))
        .order_by(Study.id)
    ):
        if ref is not None:  # the IN list never holds None; this is for the type checker
            found.setdefault(ref, (study_id, patient_key, pseudonym))
    return found


@dataclass
class RematchResult:
    """What :func:`rematch_labels` did, per site: rows that found their study, by status."""

    by_site: dict[str, RowCounts] = field(default_factory=dict)
    labels_added: int = 0
    conflicts_flagged: int = 0

    @property
    def rows(self) -> int:
        """Rows that found their study."""
        return sum(counts.total for counts in self.by_site.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "labels_added": self.labels_added,
            "conflicts_flagged": self.conflicts_flagged,
            "sites": {site: asdict(counts) for site, counts in sorted(self.by_site.items())},
        }


def _pending_matches(session: Session) -> list[Any]:
    """Unmatched rows whose study is now catalogued: one query over the status index."""

    def joined(column: Any, kind: str) -> Any:
        return (
            select(
                LabelRow.id.label("row_id"),
                LabelRow.site_id,
                LabelRow.findings,
                Study.id.label("study_id"),
                Study.patient_key,
                Patient.pseudonym,
            )
            .join(Study, and_(Study.site_id == LabelRow.site_id, column == LabelRow.ref))
            .join(Patient, Patient.id == Study.patient_id)
            .where(LabelRow.status == "unmatched", LabelRow.ref_kind == kind)
        )

    both = union_all(
        joined(Study.accession_key, REF_ACCESSION), joined(Study.study_uid, REF_STUDY_UID)
    ).subquery()
    return list(session.execute(select(both).order_by(both.c.row_id, both.c.study_id)))


def rematch_labels(session: Session, *, actor: str | None = None) -> RematchResult:
    """Match the kept ``unmatched`` rows whose studies have arrived since, inside the
    caller's write transaction (the caller commits).

    The same rules as at import apply (patient check, duplicates, conflicts); rows are
    taken in import order, so the earliest row's value wins. When nothing is pending this
    is a single indexed query that writes nothing; otherwise it takes the audit chain's
    lock, matches, and appends one ``labels.rematch`` audit record. Receivers call it
    after an ingest; ``medai labels rematch`` runs it by hand.

    Parameters
    ----------
    session
        A session whose transaction may write (the caller commits or rolls back).
    actor
        Who is recorded in the audit log; ``system:labels`` by default.

    Returns
    -------
    RematchResult
        Rows matched per site and status (empty when nothing was pending).
    """
    result = RematchResult()
    if not _pending_matches(session):
        return result
    lock_audit_chain(session)
    # Again under the lock: a concurrent re-match may have taken these rows meanwhile.
    pending = _pending_matches(session)
    labeller = Labeller(session)
    labeller.load(row.study_id for row in pending)
    updates: list[dict[str, Any]] = []
    seen: set[int] = set()
    for row in pending:
        if row.row_id in seen:
            continue  # an accession number of several studies: the first catalogued wins
        seen.add(row.row_id)
        findings, patient = split_findings(row.findings)
        status: RowStatus
        if patient is not None and not patient.matches(row.patient_key, row.pseudonym):
            status = "mismatch"
        else:
            status = labeller.apply(row.row_id, row.study_id, row.site_id, findings)
        result.by_site.setdefault(row.site_id, RowCounts()).add(status)
        updates.append({"id": row.row_id, "status": status, "study_id": row.study_id})
    if not updates:
        return result
    for start in range(0, len(updates), CHUNK):
        session.execute(update(LabelRow), updates[start : start + CHUNK])
    labeller.write(lambda ref: ref)
    result.labels_added, result.conflicts_flagged = labeller.added, labeller.flagged
    append_audit(
        session,
        actor=actor or system("labels"),
        action="labels.rematch",
        subject=None,
        details=result.to_dict(),
    )
    logger.info(
        "re-matched %d label rows: %d labels added, %d conflicts flagged",
        result.rows,
        result.labels_added,
        result.conflicts_flagged,
    )
    return result
