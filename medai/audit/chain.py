"""Hash-chained audit log: append records inside a transaction, verify the chain.

Each record's ``record_hash`` is ``sha256(prev_hash + canonical_json(record))``,
starting from :data:`GENESIS_HASH`, so editing, deleting, inserting or
reordering any record breaks the chain at that record. The chain alone cannot
reveal that the newest records were cut off, nor a chain recomputed from some
point onward by someone with write access; keep a copy of a recent head
elsewhere to anchor it (:mod:`medai.audit.anchor`, ``medai audit anchor``; the
campaign's monitoring export carries it).

``details`` must be JSON-serializable and must never carry PHI: callers pass
pseudonymized identifiers, counts and reason codes only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from medai.catalog.models import AuditRecord, utcnow

__all__ = [
    "GENESIS_HASH",
    "AuditReport",
    "AuditEntry",
    "append_audit",
    "append_audit_many",
    "lock_audit_chain",
    "canonical_json",
    "compute_record_hash",
    "verify_audit_chain",
]

GENESIS_HASH = "0" * 64

# Same value in every medai process; differs from the migration lock (medai.catalog.db).
_AUDIT_LOCK_ID = 0x6D656461_0002

_MAX_LENGTHS = {"actor": 128, "action": 64, "subject": 128}


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify_audit_chain`.

    ``records`` counts the records that verified before the first problem (all
    of them when ``ok``); ``first_bad_seq`` is the sequence number where the
    chain breaks (for a deleted record: the missing number).
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    problem: str | None


def canonical_json(value: Any) -> str:
    """Serialize ``value`` the one way the hash is computed over.

    Parameters
    ----------
    value
        JSON-serializable data (no NaN or infinity).

    Returns
    -------
    str
        Sorted keys, no whitespace, non-ASCII kept as is.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _as_utc(at: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every timestamp medai writes is UTC.
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def compute_record_hash(
    prev_hash: str,
    *,
    seq: int,
    at: dt.datetime,
    actor: str,
    action: str,
    subject: str | None,
    details: Mapping[str, Any],
) -> str:
    """The ``record_hash`` of an audit record.

    Parameters
    ----------
    prev_hash
        ``record_hash`` of the previous record, or :data:`GENESIS_HASH`.
    seq, at, actor, action, subject, details
        The record's fields; ``at`` is hashed as UTC ISO 8601 with microseconds
        (a naive value is taken as UTC).

    Returns
    -------
    str
        sha256 hex digest.
    """
    payload = {
        "seq": seq,
        "at": _as_utc(at).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
    }
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode("utf-8")).hexdigest()


def lock_audit_chain(session: Session) -> None:
    """Take the audit chain's lock for the rest of the caller's transaction.

    :func:`medai.audit.audited_transaction` takes it for you; call this directly only
    where a helper decides part-way through a caller's transaction that it will write.
    A transaction that writes other rows *and* appends audit records must call
    this before its first write: taking the lock only at the first append, after
    rows another transaction may be waiting on, can deadlock on PostgreSQL. On
    SQLite the ``BEGIN IMMEDIATE`` transaction already serializes writers.
    Re-entrant: taking it again in the same transaction is harmless.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_AUDIT_LOCK_ID)))


def append_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditRecord:
    """Append one record to the audit chain, inside the caller's transaction.

    Appends are serialized so the chain never forks: on PostgreSQL by an
    advisory lock held until the transaction ends, on SQLite by the
    ``BEGIN IMMEDIATE`` transaction of :func:`medai.catalog.db.create_engine_for`.
    The unique ``seq`` backs both up. The record is flushed, not committed.

    Parameters
    ----------
    session
        The caller's session (PostgreSQL: READ COMMITTED, the default).
    actor
        Who acted, spelled by :mod:`medai.audit.actors` (``user:<login>``,
        ``system:<part>``, ``apikey:<name>``).
    action
        What was done, e.g. ``ingest.stored``, ``snapshot.create``.
    subject
        What it was done to, as a pseudonymized id (never PHI).
    details
        JSON-serializable facts without PHI.

    Returns
    -------
    medai.catalog.models.AuditRecord
        The new, flushed record.
    """
    seq = append_audit_many(session, [AuditEntry(actor, action, subject, details)])
    session.flush()
    return session.scalars(sa.select(AuditRecord).where(AuditRecord.seq == seq)).one()


@dataclass(frozen=True)
class AuditEntry:
    """One record to append with :func:`append_audit_many`."""

    actor: str
    action: str
    subject: str | None = None
    details: Mapping[str, Any] | None = None


def append_audit_many(session: Session, entries: Sequence[AuditEntry]) -> int:
    """Append several records in order, inside the caller's transaction.

    The same chain and locking as :func:`append_audit`, with one read of the
    chain's head and one multi-row insert: what a batch of ingests needs.
    Returns the ``seq`` of the last record appended (of the chain's head if none).
    """
    if not entries:
        head = session.scalar(sa.select(sa.func.max(AuditRecord.seq)))
        return int(head or 0)
    normalized = []
    for entry in entries:
        for name in ("actor", "action", "subject"):
            value = getattr(entry, name)
            if value is not None and len(value) > _MAX_LENGTHS[name]:
                raise ValueError(f"audit {name} longer than {_MAX_LENGTHS[name]} characters")
        normalized.append(json.loads(canonical_json(dict(entry.details or {}))))
    lock_audit_chain(session)
    last = session.execute(
        sa.select(AuditRecord.seq, AuditRecord.record_hash)
        .order_by(AuditRecord.seq.desc())
        .limit(1)
    ).first()
    seq, prev_hash = (0, GENESIS_HASH) if last is None else (last.seq, last.record_hash)
    rows: list[dict[str, Any]] = []
    for entry, details in zip(entries, normalized, strict=True):
        seq += 1
        at = utcnow()
        record_hash = compute_record_hash(
            prev_hash,
            seq=seq,
            at=at,
            actor=entry.actor,
            action=entry.action,
            subject=entry.subject,
            details=details,
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "subject": entry.subject,
                "details": details,
                "prev_hash": prev_hash,
                "record_hash": record_hash,
            }
        )
        prev_hash = record_hash
    session.execute(sa.insert(AuditRecord), rows)
    return seq


def verify_audit_chain(session: Session, *, batch_size: int = 1000) -> AuditReport:
    """Recompute the whole chain in ``seq`` order and report the first break.

    Parameters
    ----------
    session
        A session on the catalog; the records are streamed, not loaded at once.
    batch_size
        Rows fetched per round trip.

    Returns
    -------
    AuditReport
        ``ok`` when every record follows its predecessor and matches its hash.
    """
    columns = (
        AuditRecord.seq,
        AuditRecord.at,
        AuditRecord.actor,
        AuditRecord.action,
        AuditRecord.subject,
        AuditRecord.details,
        AuditRecord.prev_hash,
        AuditRecord.record_hash,
    )
    stmt = sa.select(*columns).order_by(AuditRecord.seq).execution_options(yield_per=batch_size)
    expected_seq, prev_hash, verified = 1, GENESIS_HASH, 0
    result = session.execute(stmt)
    try:
        for row in result:
            broken = _check_record(row, expected_seq, prev_hash)
            if broken is not None:
                bad_seq, problem = broken
                return AuditReport(
                    ok=False, records=verified, first_bad_seq=bad_seq, problem=problem
                )
            verified += 1
            expected_seq, prev_hash = row.seq + 1, row.record_hash
    finally:
        # Returning early must not leave PostgreSQL's server-side cursor open.
        result.close()
    return AuditReport(ok=True, records=verified, first_bad_seq=None, problem=None)


def _check_record(row: sa.Row[Any], expected_seq: int, prev_hash: str) -> tuple[int, str] | None:
    """The (seq, problem) where ``row`` breaks the chain, or None when it fits."""
    if row.seq > expected_seq:
        return expected_seq, f"record seq {expected_seq} is missing (next is seq {row.seq})"
    if row.seq < expected_seq:
        return row.seq, f"unexpected record seq {row.seq} where seq {expected_seq} belongs"
    if row.prev_hash != prev_hash:
        return row.seq, (
            f"record seq {row.seq} does not follow its predecessor: "
            "a record was inserted, removed or reordered"
        )
    recomputed = compute_record_hash(
        row.prev_hash,
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=row.details,
    )
    if row.record_hash != recomputed:
        return row.seq, f"record seq {row.seq} does not match its hash: it was edited"
    return None
