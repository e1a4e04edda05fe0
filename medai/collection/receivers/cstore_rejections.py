"""Rejected C-STORE associations, recorded when they happen: a WARNING line and an audit record."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from sqlalchemy import Engine

from medai.audit import actors, append_audit, audited_transaction

__all__ = ["REJECTED_ACTION", "REJECTION_AUDIT_SECONDS", "RejectionRecorder"]

# The listener's logger: its rejections belong with its other lines.
logger = logging.getLogger("medai.collection.receivers.cstore")

REJECTED_ACTION = "cstore.association-rejected"
# A peer retrying a refused association every second must not fill the audit chain:
# one record per peer host and reason per interval, the rejections between counted in it.
REJECTION_AUDIT_SECONDS = 60.0
_MAX_REJECTION_KEYS = 4096


def _printable(title: str) -> str:
    """An AE title as a peer sent it, safe to log: printable ASCII, at most 16 characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in title.strip()[:16])


class RejectionRecorder:
    """Records each rejected association when it happens: a WARNING line and an audit record.

    The record (actor ``system:cstore``, action :data:`REJECTED_ACTION`) holds the calling
    and called AE titles, the peer's address and the reason; no DICOM value. Rejections
    from one peer host for one reason are audited at most once per ``interval`` seconds,
    the next record counting those between (``"repeated"``), so a peer retrying in a loop
    cannot flood the chain. With no ``engine`` only the log line is written.
    """

    def __init__(
        self,
        engine: Engine | None,
        ae_title: str,
        sites: Mapping[str, str],
        *,
        interval: float = REJECTION_AUDIT_SECONDS,
    ) -> None:
        self._engine, self._ae_title, self._sites = engine, ae_title.strip(), sites
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._repeated: dict[tuple[str, str], int] = {}

    def reason(self, calling: str, called: str) -> str:
        """Why pynetdicom refused it, by the same tests (called AE title first, as it does)."""
        if called.strip() != self._ae_title:
            return "called-ae-title-not-recognised"
        if calling.strip() not in self._sites:
            return "calling-ae-title-not-recognised"
        return "too-many-associations"

    def record(
        self, calling: str, called: str, host: str, port: int, reason: str | None = None
    ) -> None:
        """Log and audit one rejection (or count it into the next record of its peer).

        ``reason``: why, when it is not pynetdicom's own check (:meth:`reason`), e.g. a
        failed TLS handshake or a client certificate not allowed for the calling AE title.
        """
        reason = reason or self.reason(calling, called)
        key, now = (host, reason), time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._repeated[key] = self._repeated.get(key, 0) + 1
                return
            if len(self._last) >= _MAX_REJECTION_KEYS:
                self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            self._last[key] = now
            repeated = self._repeated.pop(key, 0)
        details = {
            "calling_ae_title": _printable(calling),
            "called_ae_title": _printable(called),
            "peer": f"{host}:{port}",
            "reason": reason,
            "repeated": repeated,
        }
        logger.warning(
            "rejected an association from %s: %s (calling AE %r, called AE %r; %d more since "
            "the last record); medai's AE title is %r",
            details["peer"],
            reason,
            details["calling_ae_title"],
            details["called_ae_title"],
            repeated,
            self._ae_title,
        )
        if self._engine is None:
            return
        try:
            with audited_transaction(self._engine) as session:
                append_audit(
                    session, actor=actors.system("cstore"), action=REJECTED_ACTION, details=details
                )
        except Exception as exc:  # the refusal stands whatever the catalog does; say so
            logger.error("could not audit a rejected association: %s", type(exc).__name__)
