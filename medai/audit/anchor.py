"""Anchoring the audit chain: its head as ``SEQ:HASH``, and verification against a kept head.

The chain alone proves that no record *inside* it was changed; it cannot see its newest
records cut off, nor a chain recomputed from some record onward. A head kept elsewhere (the
campaign's monitoring export carries it; ``medai audit anchor`` prints it) closes both gaps up
to that head: the chain must still reach the anchored sequence number, with the anchored hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from medai.audit.chain import GENESIS_HASH, AuditReport, verify_audit_chain
from medai.catalog.models import AuditRecord
from medai.errors import BadAuditAnchor

__all__ = ["ANCHORED_ACTION", "AuditHead", "audit_head", "parse_anchor", "verify_against_anchor"]

ANCHORED_ACTION = "audit.anchored"
"""Audit action ``medai audit anchor`` appends after the head it printed (``medai doctor``)."""

_ANCHOR = re.compile(r"^\s*(\d+):([0-9a-fA-F]{64})\s*$")


@dataclass(frozen=True)
class AuditHead:
    """The newest record of the chain (seq 0 and the genesis hash for an empty chain)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def parse_anchor(text: str) -> AuditHead:
    """``SEQ:HASH`` as printed by ``medai audit anchor``.

    Raises
    ------
    BadAuditAnchor
        Saying what the form is.
    """
    match = _ANCHOR.match(text)
    if match is None:
        raise BadAuditAnchor(
            f"{text!r} is not an audit anchor: expected SEQ:HASH, a sequence number and a "
            "64-digit sha256 hex digest, as `medai audit anchor` prints"
        )
    return AuditHead(int(match.group(1)), match.group(2).lower())


def audit_head(session: Session) -> AuditHead:
    """The chain's head now."""
    last = session.execute(
        sa.select(AuditRecord.seq, AuditRecord.record_hash)
        .order_by(AuditRecord.seq.desc())
        .limit(1)
    ).first()
    return AuditHead(0, GENESIS_HASH) if last is None else AuditHead(last.seq, last.record_hash)


def verify_against_anchor(session: Session, anchor: AuditHead) -> AuditReport:
    """Verify the whole chain, then that it still reaches ``anchor`` with the anchored hash.

    Returns
    -------
    AuditReport
        The chain's own break if it has one; else a truncation (the head is below the
        anchor's seq: ``first_bad_seq`` is the first missing record) or a rewrite (the record
        at the anchor's seq has another hash: ``first_bad_seq`` is the anchor's seq, the
        rewrite began there or before).
    """
    report = verify_audit_chain(session)
    if not report.ok:
        return report
    if anchor.seq == 0:
        if anchor.hash != GENESIS_HASH:
            return AuditReport(False, report.records, 0, "anchor seq 0 must carry the genesis hash")
        return report
    head = audit_head(session)
    if head.seq < anchor.seq:
        return AuditReport(
            ok=False,
            records=report.records,
            first_bad_seq=head.seq + 1,
            problem=(
                f"the chain is truncated: it ends at record {head.seq} but the anchor names "
                f"record {anchor.seq}; records {head.seq + 1} to {anchor.seq} were deleted"
            ),
        )
    anchored = session.scalar(
        sa.select(AuditRecord.record_hash).where(AuditRecord.seq == anchor.seq)
    )
    if anchored != anchor.hash:
        return AuditReport(
            ok=False,
            records=report.records,
            first_bad_seq=anchor.seq,
            problem=(
                f"the chain was rewritten: record {anchor.seq} no longer has the anchored hash "
                f"(the rewrite began at record {anchor.seq} or before)"
            ),
        )
    return report
