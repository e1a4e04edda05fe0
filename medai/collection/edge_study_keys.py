"""The keys an edge gives the centre so that label sheets find the studies it forwarded.

A site's label sheet (its RIS export) finds a study by the keyed hash of its accession
number (``Study.accession_key``) and checks the patient by the keyed hash of the site's own
PatientID (``Study.patient_key``). Both are computed by the ingest pipeline from what
de-identification then removes, so the centre cannot compute them for the instances an edge
de-identified on site. The edge can, with the campaign's key: after the centre has
acknowledged a study's instances it posts the two hashes (``POST /v1/edge/study-keys``) and
:func:`apply_study_keys` records them on the centre's study, where it has none yet, and
matches the label rows that were waiting for that study.

Only keyed HMACs travel: nothing in them can be reversed without the campaign's key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from medai.audit import append_audit, audited_transaction
from medai.catalog.models import LabelRow, Study
from medai.collection.labels import rematch_labels

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["ACTION", "StudyKeys", "StudyKeysResult", "apply_study_keys"]

ACTION = "edge.study-keys"
_CHUNK = 500


@dataclass(frozen=True)
class StudyKeys:
    """One study's keys as the edge computed them (None: the edge has none)."""

    study_uid: str
    accession_key: str | None = None
    patient_key: str | None = None


@dataclass
class StudyKeysResult:
    """What one post did (counts only: this is what is audited and answered)."""

    studies: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicts: int = 0
    unknown: int = 0
    labels_matched: int = 0
    labels_added: int = 0
    rows_rechecked: int = 0
    _touched: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, int]:
        """The counts (no UID, no key)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def _set(current: str | None, offered: str | None) -> tuple[str | None, bool, bool]:
    """``(new value, changed, conflict)`` of one key column."""
    if offered is None or current == offered:
        return current, False, False
    if current is None:
        return offered, True, False
    return current, False, True


def apply_study_keys(
    engine: Engine, site: str, studies: Sequence[StudyKeys], *, actor: str
) -> StudyKeysResult:
    """Record the edge's keys on the site's studies and match the labels waiting for them.

    In one audited transaction: a study of ``site`` (any other site's study counts as
    ``unknown``, whether it exists or not) gains each key it lacks; a key it already holds
    with another value is kept and counted as a conflict, never overwritten. Label rows
    refused as ``mismatch`` because their study had no patient key yet are checked again
    (they applied nothing), then :func:`~medai.collection.labels.rematch_labels` matches
    every waiting row, as after an ingest. One ``edge.study-keys`` audit record holds the
    counts.

    Parameters
    ----------
    engine
        The centre's catalog.
    site
        The site of the edge key that posted.
    studies
        The keys, one entry per study (a study named twice: the first entry counts).
    actor
        Who is recorded in the audit log (the edge key).

    Returns
    -------
    StudyKeysResult
        Counts of what was set, already there, in conflict and unknown; label rows matched.
    """
    offered: dict[str, StudyKeys] = {}
    for entry in studies:
        offered.setdefault(entry.study_uid, entry)
    result = StudyKeysResult(studies=len(offered))
    uids = sorted(offered)
    keyed_patients: list[int] = []
    with audited_transaction(engine) as session:
        found: dict[str, tuple[int, str | None, str | None]] = {}
        for start in range(0, len(uids), _CHUNK):
            for row in session.execute(
                select(Study.id, Study.study_uid, Study.accession_key, Study.patient_key).where(
                    Study.site_id == site, Study.study_uid.in_(uids[start : start + _CHUNK])
                )
            ):
                found[row.study_uid] = (row.id, row.accession_key, row.patient_key)
        changes: list[dict[str, Any]] = []
        for uid in uids:
            if uid not in found:
                result.unknown += 1
                continue
            study_id, accession, patient = found[uid]
            entry = offered[uid]
            accession, set_a, clash_a = _set(accession, entry.accession_key)
            patient, set_p, clash_p = _set(patient, entry.patient_key)
            result.conflicts += int(clash_a or clash_p)
            if set_a or set_p:
                result.updated += 1
                changes.append({"id": study_id, "accession_key": accession, "patient_key": patient})
                if set_p:
                    keyed_patients.append(study_id)
            elif not (clash_a or clash_p):
                result.unchanged += 1
        if changes:
            session.execute(update(Study), changes)
        # A row checked against a study without a patient key compared the patient through
        # the ID-only pseudonym, which an issuer-scoped patient never has: refused as a
        # mismatch, with nothing applied. Now that the key is known, the check can be made.
        for start in range(0, len(keyed_patients), _CHUNK):
            chunk = keyed_patients[start : start + _CHUNK]
            rechecked = session.execute(
                update(LabelRow)
                .where(LabelRow.status == "mismatch", LabelRow.study_id.in_(chunk))
                .values(status="unmatched", study_id=None)
            )
            result.rows_rechecked += int(getattr(rechecked, "rowcount", 0) or 0)
        if changes:
            matched = rematch_labels(session, actor=actor)
            result.labels_matched = matched.rows
            result.labels_added = matched.labels_added
        append_audit(session, actor=actor, action=ACTION, subject=site, details=result.to_dict())
    return result
