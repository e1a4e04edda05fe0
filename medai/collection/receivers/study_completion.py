"""Study completion after a quiet period (like Orthanc's ``StableAge``).

DICOM has no "end of study" message: a PACS pushes a study's instances over one
or several associations, possibly minutes apart. A study therefore counts as
complete once no new instance of it arrived for ``quiet_seconds``. The ingest
pipeline sets ``Study.last_received_at`` whenever it stores a new instance and
clears ``Study.completed_at``, so a late instance reopens a completed study and
it completes anew (with a new audit record) after another quiet period.

Every receiver that runs for a while (the C-STORE listener, the web service's
STOW-RS, a DICOMweb pull) runs a :class:`CompletionSweeper` beside it; several
sweepers on one catalog are harmless, because each sweep re-reads the open
studies under the audit chain's lock and completes each study once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, func, select, update

from medai.audit import AuditEntry, actors, append_audit_many, audited_transaction
from medai.catalog.db import session_factory
from medai.catalog.models import Instance, Series, Study, utcnow
from medai.collection.labels import rematch_labels

__all__ = [
    "ACTION",
    "CompletedStudy",
    "CompletionSweeper",
    "complete_quiet_studies",
    "sweep_interval",
]

logger = logging.getLogger(__name__)

ACTION = "study.completed"
DEFAULT_ACTOR = actors.system("study-completion")
# Keeps each IN (...) list well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


@dataclass(frozen=True)
class CompletedStudy:
    """A study a sweep marked complete (its UID is the pseudonymized one)."""

    study_uid: str
    site_id: str
    instances: int


def _quiet_clock() -> ColumnElement[dt.datetime]:
    # Studies catalogued before migration 0002 have no last_received_at: their
    # first receipt is the best clock there is.
    return func.coalesce(Study.last_received_at, Study.first_received_at)


def complete_quiet_studies(
    engine: Engine,
    quiet_seconds: float,
    *,
    now: dt.datetime | None = None,
    actor: str = DEFAULT_ACTOR,
) -> list[CompletedStudy]:
    """Mark every open study that has been quiet for ``quiet_seconds`` as complete.

    In one write transaction (taken only when a quiet study exists): sets
    ``completed_at = now`` on each such study and appends one ``study.completed``
    audit record per study (subject: the pseudonymized StudyInstanceUID; details:
    site, instance count, quiet period). Idempotent: a study is completed again
    only after a new instance reopened it.

    Parameters
    ----------
    engine
        The catalog (migrated, with a campaign).
    quiet_seconds
        How long a study must have received no new instance.
    now
        The sweep's clock (UTC); default the current time. Tests pass it.
    actor
        Who the audit records name.

    Returns
    -------
    list of CompletedStudy
        The studies completed by this call, oldest first.
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=quiet_seconds)
    quiet = (Study.completed_at.is_(None), _quiet_clock() <= cutoff)
    # A read first, so an idle sweep never takes SQLite's write lock.
    reader = session_factory(engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        if session.scalar(select(Study.id).where(*quiet).limit(1)) is None:
            return []
    # The chain's lock comes before any row: every ingest commit takes it first too, so
    # no study can be reopened between the read below and the update.
    with audited_transaction(engine) as session:
        rows = session.execute(
            select(Study.id, Study.study_uid, Study.site_id)
            .where(*quiet)
            .order_by(_quiet_clock(), Study.id)
        ).all()
        if not rows:  # another sweeper got there first
            return []
        ids = [row.id for row in rows]
        counts: dict[int, int] = {}
        for chunk in _chunks(ids):
            per_study = session.execute(
                select(Series.study_id, func.count(Instance.id))
                .join(Instance, Instance.series_id == Series.id)
                .where(Series.study_id.in_(chunk))
                .group_by(Series.study_id)
            )
            counts.update((int(study_id), int(count)) for study_id, count in per_study)
            session.execute(update(Study).where(Study.id.in_(chunk)).values(completed_at=now))
        completed = [
            CompletedStudy(row.study_uid, row.site_id, counts.get(row.id, 0)) for row in rows
        ]
        append_audit_many(
            session,
            [
                AuditEntry(
                    actor,
                    ACTION,
                    study.study_uid,
                    {
                        "site": study.site_id,
                        "instances": study.instances,
                        "quiet_seconds": quiet_seconds,
                    },
                )
                for study in completed
            ],
        )
        # Label-sheet rows imported before these studies arrived can find them now.
        rematch_labels(session, actor=actor)
    logger.info(
        "%d studies complete after %g s without new instances", len(completed), quiet_seconds
    )
    return completed


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[start : start + _CHUNK] for start in range(0, len(ids), _CHUNK)]


def sweep_interval(quiet_seconds: float) -> float:
    """How often a receiver sweeps: a quarter of the quiet period, at most every 5 s.

    A study is then marked complete at most a quarter period (or 5 s) late,
    while an idle catalog sees one cheap read per interval.
    """
    return max(0.05, min(quiet_seconds / 4, 5.0))


class CompletionSweeper:
    """A background thread that runs :func:`complete_quiet_studies` periodically.

    Parameters
    ----------
    engine
        The catalog.
    quiet_seconds
        The quiet period (``Settings.study_quiet_seconds`` unless overridden).
    interval
        Seconds between sweeps; default :func:`sweep_interval` of the period.
    on_completed
        Called (in the sweeper's thread) with the studies each sweep completed.

    Use ``start()`` and ``stop()`` (which runs one final sweep), or ``with``.
    """

    def __init__(
        self,
        engine: Engine,
        quiet_seconds: float,
        *,
        interval: float | None = None,
        actor: str = DEFAULT_ACTOR,
        on_completed: Callable[[list[CompletedStudy]], None] | None = None,
    ) -> None:
        if quiet_seconds <= 0:
            raise ValueError("quiet_seconds must be positive")
        self.engine = engine
        self.quiet_seconds = quiet_seconds
        self.interval = interval if interval is not None else sweep_interval(quiet_seconds)
        self.actor = actor
        self.on_completed = on_completed
        self.completed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sweep at a time (the thread's or stop()'s)
        self._thread = threading.Thread(
            target=self._run, name="medai-study-completion", daemon=True
        )

    def __enter__(self) -> CompletionSweeper:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def sweep(self) -> list[CompletedStudy]:
        """Run one sweep now; a failure is logged and retried at the next interval."""
        with self._lock:
            try:
                done = complete_quiet_studies(self.engine, self.quiet_seconds, actor=self.actor)
            # Broad: the sweeper thread must outlive any failure (the database briefly
            # away, a lock time-out); the next interval tries again.
            except Exception as exc:
                logger.warning(
                    "study completion sweep failed: %s",
                    type(exc).__name__,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                return []
            self.completed += len(done)
        if done and self.on_completed is not None:
            self.on_completed(done)
        return done

    def stop(self, *, final_sweep: bool = True) -> None:
        """Stop the thread; then (by default) sweep once more, e.g. at shutdown."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if final_sweep:
            self.sweep()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()
