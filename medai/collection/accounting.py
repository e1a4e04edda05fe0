"""Proof that nothing was lost: inputs = stored + duplicate + quarantined; rows have files.

``verify_collection`` checks, from the catalog, the store and the quarantine:

* every finished import run accounted for each input it found (one ingest event each);
* every ``stored`` event has its instance row and every instance row its ``stored`` event;
* every instance's store file exists and (optionally) re-hashes to its key;
* every quarantine row has its raw file;
* store files no row references ("orphans", left by a crash between the store
  write and the catalog commit) are listed, and can be collected (each deletion audited).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select

from medai.audit import AuditEntry, actors, append_audit_many, audited_transaction
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import ImportRun, IngestEvent, Instance, QuarantineEntry
from medai.config import Settings, get_settings
from medai.store import ObjectStore

__all__ = [
    "ORPHAN_DELETE_ACTION",
    "RunAccount",
    "VerifyReport",
    "collect_orphans",
    "verify_collection",
]


@dataclass(frozen=True)
class RunAccount:
    run_id: int
    site_id: str
    source: str
    inputs_found: int | None
    events: int
    finished: bool

    @property
    def balanced(self) -> bool:
        return self.inputs_found is None or self.inputs_found == self.events


@dataclass
class VerifyReport:
    events: dict[str, int] = field(default_factory=dict)
    instances: int = 0
    quarantine_entries: int = 0
    runs: list[RunAccount] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    corrupt_files: list[str] = field(default_factory=list)
    quarantine_missing: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> int:
        return sum(self.events.values())

    @property
    def unbalanced_runs(self) -> list[RunAccount]:
        return [run for run in self.runs if run.finished and not run.balanced]

    @property
    def interrupted_runs(self) -> list[RunAccount]:
        return [run for run in self.runs if not run.finished]

    @property
    def problems(self) -> list[str]:
        found: list[str] = []
        stored = self.events.get("stored", 0)
        if stored != self.instances:
            found.append(f"{stored} 'stored' ingest events but {self.instances} instance rows")
        for run in self.unbalanced_runs:
            found.append(
                f"import run {run.run_id} ({run.site_id}) found {run.inputs_found} inputs "
                f"but accounted for {run.events}"
            )
        found += [f"instance file missing from the store: {key}" for key in self.missing_files]
        found += [f"instance file does not match its hash: {key}" for key in self.corrupt_files]
        found += [f"quarantined file missing: {path}" for path in self.quarantine_missing]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_collection(
    settings: Settings | None = None,
    *,
    rehash: bool = True,
) -> VerifyReport:
    """Check the accounting of everything ever offered; see the module docstring.

    Parameters
    ----------
    rehash
        Re-hash every stored file (slow on a large store) instead of checking existence.
    """
    settings = settings or get_settings()
    engine = create_engine_for(settings.resolved_database_url)
    store = ObjectStore(settings.resolved_store_dir)
    report = VerifyReport()
    try:
        referenced, quarantined = _read_catalog(engine, report)
    finally:
        engine.dispose()
    if rehash:
        for problem in store.verify(sorted(referenced)):
            (report.missing_files if problem.kind == "missing" else report.corrupt_files).append(
                problem.key
            )
    else:
        report.missing_files = sorted(key for key in referenced if not store.exists(key))
    root = settings.resolved_quarantine_dir
    report.quarantine_missing = [path for path in quarantined if not (root / path).exists()]
    report.orphan_files = sorted(key for key in store.keys() if key not in referenced)
    return report


def _read_catalog(engine: Engine, report: VerifyReport) -> tuple[set[str], list[str]]:
    """Fill ``report``'s catalog counts; return the referenced store keys and held quarantine."""
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        report.events = {
            str(outcome): int(count)
            for outcome, count in session.execute(
                select(IngestEvent.outcome, func.count()).group_by(IngestEvent.outcome)
            ).all()
        }
        report.instances = session.scalar(select(func.count()).select_from(Instance)) or 0
        event_counts = {
            int(run_id or 0): int(count)
            for run_id, count in session.execute(
                select(IngestEvent.run_id, func.count())
                .where(IngestEvent.run_id.is_not(None))
                .group_by(IngestEvent.run_id)
            ).all()
        }
        for run in session.scalars(select(ImportRun).order_by(ImportRun.id)):
            report.runs.append(
                RunAccount(
                    run_id=run.id,
                    site_id=run.site_id,
                    source=run.source,
                    inputs_found=run.inputs_found,
                    events=event_counts.get(run.id, 0),
                    finished=run.finished_at is not None,
                )
            )
        referenced = set(session.scalars(select(Instance.store_key)))
        report.quarantine_entries = (
            session.scalar(select(func.count()).select_from(QuarantineEntry)) or 0
        )
        # Files purged under the retention setting are gone on purpose.
        quarantined = list(
            session.scalars(
                select(QuarantineEntry.relative_path).where(QuarantineEntry.released_at.is_(None))
            )
        )
    return referenced, quarantined


ORPHAN_DELETE_ACTION = "store.orphan-delete"


def collect_orphans(
    report: VerifyReport,
    settings: Settings | None = None,
    *,
    min_age_seconds: float = 3600,
    actor: str | None = None,
) -> int:
    """Delete the orphan store files of ``report`` older than ``min_age_seconds``.

    The age guard keeps a file that an ingest still in flight has just written
    (its catalog commit follows the store write) from being taken. Each deletion is
    audited (``store.orphan-delete``, subject: the store key) by ``actor``, the
    person at the command line by default. The re-check and the deletions run under
    the audit chain's lock, which every ingest batch takes too, so no instance row
    can start referring to a file between its re-check and its deletion.
    """
    settings = settings or get_settings()
    store = ObjectStore(settings.resolved_store_dir)
    engine = create_engine_for(settings.resolved_database_url)
    cutoff = time.time() - min_age_seconds
    actor = actor or actors.operator()
    try:
        with audited_transaction(engine) as session:
            deleted: list[AuditEntry] = []
            for key in report.orphan_files:
                path = store.path(key)
                if not path.exists() or path.stat().st_mtime > cutoff:
                    continue
                if session.scalar(select(Instance.id).where(Instance.store_key == key).limit(1)):
                    continue  # referenced since the report was made
                size = path.stat().st_size
                store.delete(key)
                deleted.append(AuditEntry(actor, ORPHAN_DELETE_ACTION, key, {"bytes": size}))
            append_audit_many(session, deleted)
    finally:
        engine.dispose()
    return len(deleted)
