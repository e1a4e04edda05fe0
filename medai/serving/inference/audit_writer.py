"""Group commit of prediction audit records: concurrent predictions share one transaction.

Every prediction is audited before it is answered (:meth:`InferenceService.predict`). One
transaction per prediction serializes them on the audit chain's lock (SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's advisory lock) and pays a commit each: under load the
audit became the longest stage of a request. :class:`AuditWriter` writes the records
waiting at the moment in one transaction (:func:`medai.audit.append_audit_many`, one read
of the chain's head, one multi-row insert, one commit); records arriving meanwhile form
the next (:class:`~medai.serving.group_commit.GroupCommit`). A lone prediction is written
at once (nothing waits for company), and each prediction is still answered only after its
own record committed; when a transaction fails, every prediction of it learns so (and is
not answered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medai.audit import AuditEntry, append_audit_many, audited_transaction
from medai.serving.group_commit import GroupCommit

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["AuditWriter"]


class AuditWriter(GroupCommit[AuditEntry]):
    """Appends audit records, the ones waiting together in one transaction.

    Parameters
    ----------
    engine
        The catalog.
    max_records
        Most records in one transaction.
    """

    def __init__(self, engine: Engine, max_records: int = 256) -> None:
        super().__init__(self._write, "prediction audit records", max_items=max_records)
        self.engine = engine

    def _write(self, entries: list[AuditEntry]) -> None:
        with audited_transaction(self.engine) as session:
            append_audit_many(session, entries)
