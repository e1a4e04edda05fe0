"""Group commit of prediction audit records: concurrent predictions share one transaction.

Every prediction is audited before it is answered (:meth:`InferenceService.predict`). One
transaction per prediction serializes them on the audit chain's lock (SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's advisory lock) and pays a commit each: under load the
audit became the longest stage of a request. :class:`AuditWriter` writes the records
waiting at the moment in one transaction (:func:`medai.audit.append_audit_many`, one read
of the chain's head, one multi-row insert, one commit); records arriving meanwhile form
the next. A lone prediction is written at once (nothing waits for company), and each
prediction is still answered only after its own record committed; when a transaction
fails, every prediction of it learns so (and is not answered).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from medai.audit import AuditEntry, append_audit_many, audited_transaction

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["AuditWriter"]

logger = logging.getLogger(__name__)


class AuditWriter:
    """Appends audit records, the ones waiting together in one transaction.

    Parameters
    ----------
    engine
        The catalog.
    max_records
        Most records in one transaction.
    """

    def __init__(self, engine: Engine, max_records: int = 256) -> None:
        self.engine = engine
        self.max_records = max_records
        self._waiting: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # The sizes of the transactions written (tests and the benchmark look at them).
        self.transactions: list[int] = []

    async def append(self, entry: AuditEntry) -> None:
        """Append ``entry``; returns once it is committed, raises what the commit raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting(), name="medai-audit-writer")
        await asyncio.shield(future)  # a client gone does not undo a record being written

    async def drain(self) -> None:
        """Wait until the records appended so far are written (the service stopping)."""
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_records]
            del self._waiting[: len(batch)]
            entries = [entry for entry, _ in batch]
            try:
                await asyncio.to_thread(self._commit, entries)
            except Exception as exc:  # each prediction decides what a failed audit means
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.transactions.append(len(entries))
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _commit(self, entries: list[AuditEntry]) -> None:
        with audited_transaction(self.engine) as session:
            append_audit_many(session, entries)
