"""Security monitoring: the catalogue of security events, the per-source throttle of failed
authentication, and the summary ``medai security status``, the dashboard and ``/metrics`` show.

The audit chain is the record of events. What counts as a security event
(:data:`SECURITY_ACTIONS`, by kind):

- ``auth-failed``: a presented API key was refused (``security.auth-failed``; reason
  ``unknown`` or ``malformed``; the source address and, for a key that looks like one of
  ours, its first characters, never the key);
- ``revoked-key-used``: a revoked key was presented (``security.revoked-key-used``; its name);
- ``rate-limited``: a source went over ``MEDAI_AUTH_FAILURES_PER_MINUTE`` failed
  authentications and is answered 429 for a minute (``security.rate-limited``, once per
  throttling);
- ``key-mismatch``: a campaign key file with another fingerprint was refused
  (``security.key-mismatch``, :mod:`medai.collection.key_guard`);
- ``association-rejected``: a refused C-STORE association (``cstore.association-rejected``,
  calling and called AE titles and the peer's address);
- ``gate-override``: a model promoted over a failed gate (``model.promote`` records whose
  ``details.gate.overridden`` is true).

The first four are written by :class:`~medai.audit.security_events.SecurityEventRecorder`,
which folds repeats: one record per (action, source, reason) per minute, the next one
carrying how many were folded (``repeated``); the record that throttles a source carries
that source's folded failures (``folded``, by action). A summary counts a record as
``1 + repeated`` events plus what it carries, so it is exact except for repeats of the last
minute not yet carried by a record (``/metrics`` counts those at once).

Two more things are judged rather than recorded (see :func:`security_summary`): quarantine
spikes by site and reason, and a missing or stale backup.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from medai.audit.security_events import (
    AUTH_FAILED,
    KEY_MISMATCH,
    RATE_LIMITED,
    REVOKED_KEY_USED,
    SecurityEventRecorder,
)
from medai.catalog.models import AuditRecord, QuarantineEntry

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from medai.config import Settings

__all__ = [
    "DEFAULT_BACKUP_STALE_HOURS",
    "KINDS",
    "SECURITY_ACTIONS",
    "WINDOWS",
    "AuthFailureLimiter",
    "BackupState",
    "QuarantineSpike",
    "SecurityMonitor",
    "SecuritySummary",
    "SourceSummary",
    "SpikeRule",
    "backup_age_seconds",
    "backup_stale_hours",
    "security_status",
    "security_summary",
]

ASSOCIATION_REJECTED: Final = "cstore.association-rejected"
MODEL_PROMOTE: Final = "model.promote"
SECURITY_ACTIONS: Final[Mapping[str, str]] = {
    "auth-failed": AUTH_FAILED,
    "revoked-key-used": REVOKED_KEY_USED,
    "rate-limited": RATE_LIMITED,
    "key-mismatch": KEY_MISMATCH,
    "association-rejected": ASSOCIATION_REJECTED,
    "gate-override": MODEL_PROMOTE,
}
"""Each kind of security event and the audit action that records it (a ``model.promote``
record counts only when it overrode the gate)."""
KINDS: Final = tuple(SECURITY_ACTIONS)
_KIND_OF: Final = {action: kind for kind, action in SECURITY_ACTIONS.items()}

WINDOWS: Final[Mapping[str, dt.timedelta]] = {
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
}
"""The windows ``medai security status`` and the dashboard show."""
DEFAULT_BACKUP_STALE_HOURS: Final = 26.0
_TOP_SOURCES: Final = 5
_WINDOW_SECONDS: Final = 60.0
_MAX_SOURCES: Final = 16384


# -- the throttle of failed authentication ---------------------------------------------


class AuthFailureLimiter:
    """Failed authentications per source address, and the sources throttled for them.

    A source's failures are counted in a one-minute window that starts at its first
    failure. The failure that takes the count over ``per_minute`` throttles the source for
    :data:`_WINDOW_SECONDS` from then: every request of it is answered 429 with
    ``Retry-After``, even one with a right key, and is not checked (so a throttled flood
    costs no catalog query). ``per_minute`` 0 throttles nothing. In memory, per process.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        window: float = _WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[float, int]] = {}  # source -> (window start, count)
        self._blocked: dict[str, float] = {}  # source -> until

    @property
    def window(self) -> float:
        """Seconds a throttled source waits (and the length of a counting window)."""
        return self._window

    def retry_after(self, source: str) -> float | None:
        """Seconds until ``source`` may try again, or None when it is not throttled."""
        now = self._clock()
        with self._lock:
            until = self._blocked.get(source)
            if until is None:
                return None
            if now >= until:
                del self._blocked[source]
                self._failures.pop(source, None)
                return None
            return until - now

    def failed(self, source: str) -> bool:
        """Count one failure of ``source``; True when this one throttles it."""
        if self.per_minute <= 0:
            return False
        now = self._clock()
        with self._lock:
            if len(self._failures) >= _MAX_SOURCES:
                self._failures = {
                    s: (start, n)
                    for s, (start, n) in self._failures.items()
                    if now - start < self._window
                }
            start, count = self._failures.get(source, (now, 0))
            if now - start >= self._window:
                start, count = now, 0
            count += 1
            self._failures[source] = (start, count)
            if count > self.per_minute and source not in self._blocked:
                self._blocked[source] = now + self._window
                return True
            return False

    def throttled_sources(self) -> int:
        """How many sources are throttled now."""
        now = self._clock()
        with self._lock:
            return sum(1 for until in self._blocked.values() if until > now)


class SecurityMonitor:
    """The web service's security events: recorded, counted for ``/metrics``, throttled.

    One per app (``Service.security``): its recorder folds repeated events (see
    :class:`~medai.audit.security_events.SecurityEventRecorder`) and its limiter throttles
    sources (:class:`AuthFailureLimiter`).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        recorder: SecurityEventRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = recorder or SecurityEventRecorder(clock=clock)
        self.limiter = AuthFailureLimiter(per_minute, clock=clock)
        self._lock = threading.Lock()
        self._auth_failures = 0
        self._throttled_requests = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> SecurityMonitor:
        """A monitor with the limit of ``MEDAI_AUTH_FAILURES_PER_MINUTE``."""
        return cls(settings.auth_failures_per_minute)

    def retry_after(self, source: str) -> float | None:
        """Seconds ``source`` must wait (its request is counted as throttled), or None."""
        wait = self.limiter.retry_after(source)
        if wait is not None:
            with self._lock:
                self._throttled_requests += 1
        return wait

    def auth_failed(
        self,
        engine: Engine | None,
        source: str,
        reason: str,
        *,
        prefix: str | None = None,
        key_name: str | None = None,
    ) -> bool:
        """Record a refused key from ``source``; True when it throttles the source.

        Parameters
        ----------
        engine
            The catalog to record in.
        source
            The client's address (behind a proxy: the one ``MEDAI_FORWARDED_ALLOW_IPS``
            lets uvicorn take from ``X-Forwarded-For``).
        reason
            ``unknown``, ``malformed`` or ``revoked`` (recorded as ``revoked-key-used``).
        prefix, key_name
            The presented key's first characters (keys that look like medai's only) and,
            for a revoked key, its name.
        """
        with self._lock:
            self._auth_failures += 1
        action = REVOKED_KEY_USED if reason == "revoked" else AUTH_FAILED
        details: dict[str, Any] = {}
        if prefix is not None:
            details["key_prefix"] = prefix
        self.recorder.record(
            engine, action, source=source, reason=reason, subject=key_name, details=details
        )
        throttled = self.limiter.failed(source)
        if throttled:
            # The failures folded since the source's last records are carried by this one
            # ("folded", by action), so the chain counts every failure of the burst.
            folded = self.recorder.take_folded(source, (AUTH_FAILED, REVOKED_KEY_USED))
            self.recorder.record(
                engine,
                RATE_LIMITED,
                source=source,
                reason="auth-failures",
                details={
                    "per_minute": self.limiter.per_minute,
                    "seconds": int(self.limiter.window),
                    "folded": folded,
                },
            )
        return throttled

    @property
    def auth_failures(self) -> int:
        """Failed authentications seen (revoked keys included)."""
        with self._lock:
            return self._auth_failures

    @property
    def throttled_requests(self) -> int:
        """Requests answered 429 because their source was throttled."""
        with self._lock:
            return self._throttled_requests

    def event_counts(self) -> dict[str, int]:
        """Events seen by this service, by kind (written and folded alike)."""
        counts = self.recorder.counts()
        return {kind: counts.get(action, 0) for kind, action in SECURITY_ACTIONS.items()}


# -- the summary ------------------------------------------------------------------------


@dataclass(frozen=True)
class SpikeRule:
    """When a day's quarantined count of a site and reason is a spike.

    A day D is a spike for (site, reason) when its count is at least ``minimum`` and more
    than ``factor`` times that pair's mean daily count over the ``baseline_days`` days
    before D (days with nothing count as 0, so a reason new to a site spikes as soon as it
    reaches ``minimum`` in a day).
    """

    factor: float = 3.0
    minimum: int = 10
    baseline_days: int = 14

    @classmethod
    def for_settings(cls, settings: Settings) -> SpikeRule:
        return cls(factor=settings.quarantine_spike_factor, minimum=settings.quarantine_spike_min)


@dataclass(frozen=True)
class QuarantineSpike:
    """One spike: a day's quarantined count of a site and reason against its baseline."""

    site: str
    reason: str
    day: dt.date
    count: int
    baseline_mean: float


@dataclass(frozen=True)
class SourceSummary:
    """One source of events (an address, a key file, a person overriding a gate)."""

    source: str
    events: int
    kinds: list[str]
    last_seen: dt.datetime


@dataclass(frozen=True)
class BackupState:
    """The newest backup (``backup.created``) and whether it is too old."""

    status: str  # ok | stale | missing
    last: dt.datetime | None
    age_hours: float | None
    stale_hours: float


@dataclass(frozen=True)
class SecuritySummary:
    """The security events of one window, as ``medai security status`` shows them."""

    since: dt.datetime
    until: dt.datetime
    events: dict[str, int]
    records: dict[str, int]
    last_seen: dict[str, dt.datetime | None]
    top_sources: list[SourceSummary]
    quarantine_spikes: list[QuarantineSpike]
    backup: BackupState
    alerts: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Every event of the window."""
        return sum(self.events.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601)."""

        def plain(value: Any) -> Any:
            if isinstance(value, dt.datetime | dt.date):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        data: dict[str, Any] = plain(asdict(self))
        data["total"] = self.total
        return data


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _source_of(kind: str, actor: str, details: Mapping[str, Any]) -> str | None:
    if kind == "association-rejected":
        peer = str(details.get("peer") or "")
        return peer.rsplit(":", 1)[0] if ":" in peer else (peer or None)
    if kind == "gate-override":
        return actor
    source = details.get("source")
    return str(source) if source else None


def _carried(details: Mapping[str, Any]) -> dict[str, int]:
    """The folded events a record carries for other kinds (``details["folded"]``)."""
    folded = details.get("folded")
    if not isinstance(folded, Mapping):
        return {}
    return {
        _KIND_OF[action]: count
        for action, count in folded.items()
        if action in _KIND_OF and isinstance(count, int) and count > 0
    }


def _overrode(details: Mapping[str, Any]) -> bool:
    gate = details.get("gate")
    return isinstance(gate, Mapping) and gate.get("overridden") is True


def backup_stale_hours(settings: Settings) -> float:
    """``MEDAI_BACKUP_STALE_HOURS``: a backup older than this is stale."""
    return float(settings.backup_stale_hours)


def _backup_state(session: Session, now: dt.datetime, stale_hours: float) -> BackupState:
    try:
        from medai.ops.backup import last_backup
    except ImportError:  # the backup part is not there: no backup recorded
        last = None
    else:
        last = last_backup(session)
    if last is None:
        return BackupState("missing", None, None, stale_hours)
    age = max(0.0, (now - _utc(last)).total_seconds() / 3600)
    return BackupState("stale" if age > stale_hours else "ok", _utc(last), age, stale_hours)


def _quarantine_spikes(
    session: Session, since: dt.datetime, now: dt.datetime, rule: SpikeRule
) -> list[QuarantineSpike]:
    first_day = since.date()
    start = dt.datetime.combine(
        first_day - dt.timedelta(days=rule.baseline_days), dt.time(), dt.UTC
    )
    rows = session.execute(
        sa.select(QuarantineEntry.site_id, QuarantineEntry.reason_code, QuarantineEntry.received_at)
        .where(QuarantineEntry.received_at >= start)
        .where(QuarantineEntry.received_at <= now)
    )
    daily: dict[tuple[str, str], Counter[dt.date]] = defaultdict(Counter)
    for site, reason, received in rows:
        daily[(site, reason)][_utc(received).date()] += 1
    spikes = []
    for (site, reason), counts in sorted(daily.items()):
        day = first_day
        while day <= now.date():
            count = counts.get(day, 0)
            if count >= rule.minimum:
                before = (day - dt.timedelta(days=n) for n in range(1, rule.baseline_days + 1))
                mean = sum(counts.get(d, 0) for d in before) / rule.baseline_days
                if count > rule.factor * mean:
                    spikes.append(QuarantineSpike(site, reason, day, count, round(mean, 2)))
            day += dt.timedelta(days=1)
    return spikes


def security_summary(
    session: Session,
    since: dt.datetime,
    *,
    now: dt.datetime | None = None,
    stale_hours: float = DEFAULT_BACKUP_STALE_HOURS,
    spike: SpikeRule | None = None,
) -> SecuritySummary:
    """The security events from ``since`` to ``now``: counts, sources, spikes, backup.

    Parameters
    ----------
    session
        A session on the catalog (read only).
    since, now
        The window (UTC; ``now`` defaults to the wall clock).
    stale_hours
        A backup older than this is stale (``MEDAI_BACKUP_STALE_HOURS``).
    spike
        When a quarantine day is a spike (:class:`SpikeRule`; its defaults when None).

    Returns
    -------
    SecuritySummary
        Events by kind (a folded record counts ``1 + repeated``), records by kind, the
        last event of each kind, the top sources, quarantine spikes of the window's days,
        the backup state, and ``alerts``: short codes of what needs a look
        (``rate-limited``, ``key-mismatch``, ``revoked-key-used``, ``quarantine-spike``,
        ``backup-missing``, ``backup-stale``).
    """
    now = _utc(now or dt.datetime.now(dt.UTC))
    since = _utc(since)
    rule = spike or SpikeRule()
    rows = session.execute(
        sa.select(AuditRecord.at, AuditRecord.actor, AuditRecord.action, AuditRecord.details)
        .where(AuditRecord.action.in_(tuple(SECURITY_ACTIONS.values())))
        .where(AuditRecord.at >= since)
        .where(AuditRecord.at <= now)
        .order_by(AuditRecord.seq)
    )
    events: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
    records: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
    last_seen: dict[str, dt.datetime | None] = dict.fromkeys(KINDS)
    by_source: dict[str, tuple[int, set[str], dt.datetime]] = {}
    for at, actor, action, details in rows:
        facts: Mapping[str, Any] = details if isinstance(details, Mapping) else {}
        kind = _KIND_OF[action]
        if kind == "gate-override" and not _overrode(facts):
            continue
        repeated = facts.get("repeated", 0)
        n = 1 + (repeated if isinstance(repeated, int) and repeated > 0 else 0)
        moment = _utc(at)
        events[kind] += n
        records[kind] += 1
        last_seen[kind] = moment
        source = _source_of(kind, actor, facts)
        carried = _carried(facts)  # a throttling record carries the source's folded failures
        for other, count in carried.items():
            events[other] += count
        if source is not None:
            total, kinds, _ = by_source.get(source, (0, set(), moment))
            n += sum(carried.values())
            by_source[source] = (total + n, kinds | {kind} | set(carried), moment)
    top = sorted(by_source.items(), key=lambda item: (-item[1][0], item[0]))[:_TOP_SOURCES]
    sources = [
        SourceSummary(source, total, sorted(kinds), seen) for source, (total, kinds, seen) in top
    ]
    spikes = _quarantine_spikes(session, since, now, rule)
    backup = _backup_state(session, now, stale_hours)
    alerts = [kind for kind in ("rate-limited", "key-mismatch", "revoked-key-used") if events[kind]]
    if spikes:
        alerts.append("quarantine-spike")
    if backup.status != "ok":
        alerts.append(f"backup-{backup.status}")
    return SecuritySummary(
        since=since,
        until=now,
        events=dict(events),
        records=dict(records),
        last_seen=last_seen,
        top_sources=sources,
        quarantine_spikes=spikes,
        backup=backup,
        alerts=alerts,
    )


def security_status(
    session: Session, settings: Settings, *, now: dt.datetime | None = None
) -> dict[str, SecuritySummary]:
    """The summaries of :data:`WINDOWS` (last 24 hours, last 7 days) with the settings' rules."""
    moment = _utc(now or dt.datetime.now(dt.UTC))
    return {
        name: security_summary(
            session,
            moment - length,
            now=moment,
            stale_hours=backup_stale_hours(settings),
            spike=SpikeRule.for_settings(settings),
        )
        for name, length in WINDOWS.items()
    }


def backup_age_seconds(session: Session, now: dt.datetime | None = None) -> float:
    """Seconds since the last backup; +Inf when none was ever made (for ``/metrics``)."""
    state = _backup_state(session, _utc(now or dt.datetime.now(dt.UTC)), math.inf)
    return math.inf if state.age_hours is None else state.age_hours * 3600
