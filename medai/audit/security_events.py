"""Security events written to the audit chain without letting a flood flood it.

Every part that sees a security event (the web service's key check, the campaign key check
of :mod:`medai.collection.key_guard`) records it here, so the record has one shape: actor
``system:security``, the action (one of :data:`SECURITY_EVENT_ACTIONS`), and details with the
``source`` (an address, a key file), the ``reason`` and ``repeated``, the events of the same
(action, source, reason) folded into it since the previous record (see
:class:`SecurityEventRecorder`). The summaries and the catalogue of every action that counts
as a security event (association rejections and gate overrides included) live above, in
:mod:`medai.ops.security`; this module sits in the audit layer so that collection can record
too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from medai.audit import actors
from medai.audit.chain import append_audit
from medai.audit.transaction import audited_transaction

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "AUTH_FAILED",
    "DEDUP_SECONDS",
    "KEY_MISMATCH",
    "RATE_LIMITED",
    "REVOKED_KEY_USED",
    "SECURITY_EVENT_ACTIONS",
    "SecurityEventRecorder",
    "default_recorder",
]

logger = logging.getLogger(__name__)

AUTH_FAILED: Final = "security.auth-failed"
"""A presented API key was refused: reason ``unknown`` or ``malformed`` (never the key)."""
REVOKED_KEY_USED: Final = "security.revoked-key-used"
"""A revoked API key was presented (its name and prefix are recorded)."""
KEY_MISMATCH: Final = "security.key-mismatch"
"""A campaign key file with another fingerprint than the catalog's was refused."""
RATE_LIMITED: Final = "security.rate-limited"
"""A source address was throttled after too many failed authentications."""
SECURITY_EVENT_ACTIONS: Final = (AUTH_FAILED, REVOKED_KEY_USED, KEY_MISMATCH, RATE_LIMITED)
"""The actions this module writes."""

DEDUP_SECONDS: Final = 60.0
"""One record per (action, source, reason) per this many seconds; the rest are folded."""
_MAX_KEYS: Final = 4096


class SecurityEventRecorder:
    """Writes security events to the audit chain, at most one per key per interval.

    A flood must never flood the chain: the first event of an (action, source, reason)
    is written at once; the same event again within ``interval`` seconds is only counted
    (in memory, and in :meth:`counts`, which ``/metrics`` shows), and the next record of
    that key says how many were folded into it (``details["repeated"]``). So a burst of 500
    wrong keys from one address costs one record a minute, not 500. The counts are this
    process's: each worker of ``medai serve --workers N`` has its own.

    Parameters
    ----------
    interval
        Seconds during which a repeated event is folded (default :data:`DEDUP_SECONDS`).
    clock
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self, *, interval: float = DEDUP_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, str], float] = {}
        self._repeated: dict[tuple[str, str, str], int] = {}
        self._counts: Counter[str] = Counter()
        self._written = 0
        self._folded = 0

    def record(
        self,
        engine: Engine | None,
        action: str,
        *,
        source: str,
        reason: str,
        subject: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Count one event and write its record unless one of its key was written lately.

        Parameters
        ----------
        engine
            The catalog; None counts the event without writing (no catalog at hand).
        action
            One of :data:`SECURITY_EVENT_ACTIONS` (or another ``security.*`` action).
        source
            Where it came from: the client address, the key file; part of the key.
        reason
            Why (``unknown``, ``malformed``, ``other-key``, ...); part of the key.
        subject, details
            Facts without PHI and without secrets (a key's prefix, never the key).

        Returns
        -------
        bool
            Whether a record was written (False: folded into the next one, or the catalog
            failed, which is logged and never raised: the refusal stands regardless).
        """
        key, now = (action, source, reason), self._clock()
        with self._lock:
            self._counts[action] += 1
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._repeated[key] = self._repeated.get(key, 0) + 1
                self._folded += 1
                return False
            if len(self._last) >= _MAX_KEYS:
                # Forget keys whose interval is over (their folded counts stay in counts()).
                self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
                self._repeated = {k: n for k, n in self._repeated.items() if k in self._last}
            self._last[key] = now
            repeated = self._repeated.pop(key, 0)
        if engine is None:
            return False
        facts = {"source": source, "reason": reason, "repeated": repeated, **(details or {})}
        try:
            with audited_transaction(engine) as session:
                append_audit(
                    session,
                    actor=actors.system("security"),
                    action=action,
                    subject=subject,
                    details=facts,
                )
        except Exception as exc:  # the event is still counted; say it was not recorded
            logger.error("could not audit a security event %s: %s", action, type(exc).__name__)
            return False
        with self._lock:
            self._written += 1
        return True

    def take_folded(self, source: str, actions: tuple[str, ...]) -> dict[str, int]:
        """Events of ``source`` folded and not yet carried by a record, by action; taken
        (the caller's record carries them, so the next record of their key does not)."""
        taken: dict[str, int] = {}
        with self._lock:
            for key in [k for k in self._repeated if k[0] in actions and k[1] == source]:
                taken[key[0]] = taken.get(key[0], 0) + self._repeated.pop(key)
        return taken

    def counts(self) -> dict[str, int]:
        """Every event seen by this recorder, by action (written and folded alike)."""
        with self._lock:
            return dict(self._counts)

    @property
    def written(self) -> int:
        """Records this recorder wrote to the chain."""
        with self._lock:
            return self._written

    @property
    def folded(self) -> int:
        """Events counted but folded into a later record."""
        with self._lock:
            return self._folded


_DEFAULT = SecurityEventRecorder()


def default_recorder() -> SecurityEventRecorder:
    """The process's recorder, for callers without their own (the command line)."""
    return _DEFAULT
