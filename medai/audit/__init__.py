"""The hash-chained audit log that every part of medai writes to (below all the others)."""

from medai.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    AuditReport,
    append_audit,
    append_audit_many,
    canonical_json,
    compute_record_hash,
    lock_audit_chain,
    verify_audit_chain,
)

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditReport",
    "append_audit",
    "append_audit_many",
    "canonical_json",
    "compute_record_hash",
    "lock_audit_chain",
    "verify_audit_chain",
]
