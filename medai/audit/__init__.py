"""The hash-chained audit log that every part of medai writes to (below all the others).

Names are imported on first use, so that importing ``medai.audit.cli`` (for ``medai --help``)
loads no database code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medai.lazy import lazy_exports

if TYPE_CHECKING:
    from medai.audit import actors
    from medai.audit.anchor import AuditHead, audit_head, parse_anchor, verify_against_anchor
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
    from medai.audit.transaction import audited_transaction

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditHead",
    "AuditReport",
    "actors",
    "audit_head",
    "append_audit",
    "append_audit_many",
    "audited_transaction",
    "canonical_json",
    "compute_record_hash",
    "lock_audit_chain",
    "parse_anchor",
    "verify_against_anchor",
    "verify_audit_chain",
]

_MODULES = {
    "GENESIS_HASH": "chain",
    "AuditEntry": "chain",
    "AuditReport": "chain",
    "AuditHead": "anchor",
    "audit_head": "anchor",
    "parse_anchor": "anchor",
    "verify_against_anchor": "anchor",
    "append_audit": "chain",
    "append_audit_many": "chain",
    "canonical_json": "chain",
    "compute_record_hash": "chain",
    "lock_audit_chain": "chain",
    "verify_audit_chain": "chain",
    "audited_transaction": "transaction",
}

__getattr__ = lazy_exports(__name__, _MODULES)
