"""Group commit: the items waiting at a moment are written in one transaction.

Under load, one transaction per request serializes requests on the database's write lock
(SQLite's ``BEGIN IMMEDIATE``, the audit chain's advisory lock on PostgreSQL) and pays a
commit each. A :class:`GroupCommit` hands the items waiting at the moment to one call of
its ``commit`` function (in a worker thread); items arriving meanwhile form the next
group. A lone item is written at once: nothing waits for company.

Two ways in:

- :meth:`GroupCommit.append` returns once the item's group committed and raises what the
  commit raised (the audit record a prediction must have before it is answered);
- :meth:`GroupCommit.submit` does not wait (what may be written just after the answer,
  such as the record a prediction's monitoring and feedback need); a failed group is
  logged. :meth:`GroupCommit.flush` waits for what was submitted so far, so that a reader
  of the same process (the feedback route) sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Writes the items waiting together, by one call of ``commit`` per group.

    Parameters
    ----------
    commit
        Writes a group in one transaction; blocking (it runs in a worker thread). What it
        raises fails every item of the group.
    what
        What the items are, for the log of a failed submitted group.
    max_items
        Most items in one group.
    """

    def __init__(self, commit: Callable[[list[T]], None], what: str, max_items: int = 256) -> None:
        self._commit = commit
        self.what = what
        self.max_items = max_items
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # The sizes of the groups written (tests and the benchmark look at them).
        self.transactions: list[int] = []

    def _enqueue(self, item: T) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting(), name=f"medai-{self.what}")
        return future

    async def append(self, item: T) -> None:
        """Write ``item``; returns once it is committed, raises what the commit raised."""
        await asyncio.shield(self._enqueue(item))  # a client gone does not undo a write

    def submit(self, item: T) -> None:
        """Write ``item`` soon, without waiting; a failure is logged (call on the loop)."""
        future = self._enqueue(item)
        future.add_done_callback(self._log_failure)

    def _log_failure(self, future: asyncio.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            logger.error("%s could not be written: %s", self.what, type(exc).__name__)

    async def flush(self) -> None:
        """Wait until the items given so far are written (or failed)."""
        writer = self._writer
        if writer is not None:
            await asyncio.gather(asyncio.shield(writer), return_exceptions=True)

    async def drain(self) -> None:
        """:meth:`flush`, for a service stopping."""
        await self.flush()

    async def _write_waiting(self) -> None:
        while self._waiting:
            group = self._waiting[: self.max_items]
            del self._waiting[: len(group)]
            items = [item for item, _ in group]
            try:
                await asyncio.to_thread(self._commit, items)
            except Exception as exc:  # each waiting caller decides what a failure means
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.transactions.append(len(items))
            for _, future in group:
                if not future.done():
                    future.set_result(None)
