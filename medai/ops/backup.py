"""Backups that are restored: create, verify, restore and prune backup sets of one deployment.

A backup set (see :mod:`medai.ops.backup_set` for the layout) holds, consistently while the
deployment runs:

* the catalog: SQLite's online backup API (``sqlite3.Connection.backup``), or ``pg_dump -Fc``
  taken in the snapshot of a REPEATABLE READ transaction that also reads the store keys and
  the audit head, so the dump, the object list and the anchor describe one moment;
* every store object the dumped catalog refers to, copied into the destination's shared
  object area only when no earlier set holds it (objects are immutable and written before
  the catalog row that refers to them, so every referenced object exists);
* the home's other state: snapshot manifests, MLflow's SQLite store and artifacts (models,
  runs), the serving key and the dashboard session secret;
* the quarantine's reasons (its sidecars without ``original_name``, which may identify a
  patient) but **not** its raw files, which hold PHI: a backup travels further and lives
  longer than the quarantine's retention allows. ``--include-quarantine`` carries them for a
  deployment whose data protection officer wants it. A restore without them marks those
  quarantine rows released (audited), as the retention purge does;
* the audit head as the set's anchor, and the campaign key's fingerprint, never the key: the
  key lives in its escrow (``medai campaign key export``), so a stolen backup pseudonymizes
  nothing and links no one.

:func:`last_backup` is what ``medai security`` and ``medai doctor`` read. Verifying is in
:mod:`medai.ops.backup_verify`, restoring in :mod:`medai.ops.backup_restore`, the catalog's
dump in :mod:`medai.ops.backup_catalog`, the folder's layout in :mod:`medai.ops.backup_set`.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import medai
from medai.audit import actors
from medai.audit.chain import append_audit
from medai.audit.transaction import audited_transaction
from medai.catalog.db import create_engine_for
from medai.catalog.models import AuditRecord, utcnow
from medai.config import Settings, get_settings
from medai.errors import BackupError
from medai.ops.backup_catalog import (
    DUMP_FILE,
    DatabaseKind,
    database_kind,
    dump_catalog,
    shown_url,
    sqlite_copy,
)
from medai.ops.backup_set import (
    FORMAT,
    BackupDest,
    CopyStats,
    Phase,
    hash_file,
    new_backup_id,
    no_progress,
    select_kept,
    sync_filesystem,
)
from medai.store import ObjectStore

__all__ = [
    "BACKUP_CREATED",
    "BACKUP_RESTORED",
    "BACKUP_VERIFIED",
    "CreateResult",
    "PruneResult",
    "create_backup",
    "last_backup",
    "list_backups",
    "prune_backups",
]

BACKUP_CREATED = "backup.created"
"""Audit action of a finished backup; its newest record's time is "the last backup"."""
BACKUP_VERIFIED = "backup.verified"
"""Audit action of ``medai backup verify`` (details: ok, problems)."""
BACKUP_RESTORED = "backup.restored"
"""Audit action written in the *new* home by ``medai backup restore``."""

REASONS_FILE = "quarantine-reasons.json"
_TREES = ("snapshots", "mlartifacts", "mlruns")
_SESSION_SECRET = "dashboard-session.key"  # medai.serving.sessions.SECRET_FILE_NAME
NOT_INCLUDED = (
    "the campaign key (its escrow: `medai campaign key export`); only its fingerprint",
    "raw quarantined files (PHI) unless --include-quarantine",
    "logs, caches and demo folders of the home",
)


def last_backup(session: Session) -> dt.datetime | None:
    """When the newest backup of this catalog was made (its ``backup.created`` record).

    Parameters
    ----------
    session
        A session on the catalog.

    Returns
    -------
    datetime.datetime or None
        The record's time (UTC, aware), or None when no backup was ever made.
    """
    at = session.scalar(
        sa.select(AuditRecord.at)
        .where(AuditRecord.action == BACKUP_CREATED)
        .order_by(AuditRecord.seq.desc())
        .limit(1)
    )
    if at is None:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


# -- create -------------------------------------------------------------------------------


@dataclass
class CreateResult:
    """What ``create_backup`` made."""

    id: str
    path: Path
    database: DatabaseKind
    anchor: str
    key_fingerprint: str | None
    counts: dict[str, int]
    objects: int
    objects_copied: int
    objects_present: int
    bytes_copied: int
    files: int
    files_copied: int
    seconds: float
    pruned: list[str] = field(default_factory=list)


def _home_files(settings: Settings) -> list[tuple[str, Path]]:
    """(path in a restored home, where it is now) of the home's files a backup carries."""
    home = settings.resolved_home
    found: list[tuple[str, Path]] = []
    for tree in _TREES:
        root = home / tree
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                relative = path.relative_to(home)
                # Hidden entries are writers' temporary files (e.g. snapshots/.tmp).
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if path.is_file() and not path.is_symlink():
                    found.append((relative.as_posix(), path))
    for name, path in (
        ("serving.key", settings.resolved_serving_key_file),
        (_SESSION_SECRET, home / _SESSION_SECRET),
    ):
        if path.is_file():
            found.append((name, path))
    return found


def _mlflow_sqlite(settings: Settings) -> Path | None:
    uri = settings.resolved_mlflow_tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///")).expanduser().absolute()
    return path if path.is_file() else None


def _quarantine_reasons(root: Path) -> list[dict[str, Any]]:
    """The quarantine sidecars without ``original_name`` (a file name may name a patient)."""
    reasons: list[dict[str, Any]] = []
    if not root.is_dir():
        return reasons
    for sidecar in sorted(root.glob("[0-9a-f][0-9a-f]/*.json")):
        try:
            document = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict):
            document.pop("original_name", None)
            reasons.append(document)
    return reasons


def create_backup(
    dest: Path,
    settings: Settings | None = None,
    *,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    link: bool = False,
    include_quarantine: bool = False,
    actor: str | None = None,
    progress: Phase = no_progress,
    now: dt.datetime | None = None,
) -> CreateResult:
    """Back up the deployment of ``settings`` into the destination folder ``dest``.

    Parameters
    ----------
    dest
        A new or empty folder, or one that holds earlier backups (their objects are shared).
    keep_daily, keep_weekly
        When given, prune the sets this retention no longer keeps afterwards.
    link
        Hard-link store objects into the destination where it is on the store's filesystem.
    include_quarantine
        Also carry the raw quarantined files (PHI) and their full sidecars.
    actor
        Who made it (audit); the person at the command line by default.
    progress
        Shows the phases.

    Returns
    -------
    CreateResult

    Raises
    ------
    medai.errors.BackupError
        A destination that is not one, a dump that fails, a damaged store object.
    """
    import time

    started = time.monotonic()
    settings = settings or get_settings()
    url = settings.resolved_database_url
    kind = database_kind(url)
    created = (now or utcnow()).astimezone(dt.UTC)
    backup_id = new_backup_id(created)
    target = BackupDest(dest)
    target.initialize()
    store = ObjectStore(settings.resolved_store_dir)
    stats = CopyStats()
    with target.locked(exclusive=True):
        target.remove_partials()
        partial = target.start_set(backup_id)
        try:
            dump = partial / DUMP_FILE[kind]
            advance = progress("dumping the catalog", 1)
            with dump_catalog(url, dump) as facts:
                pass
            advance(1)
            objects: list[dict[str, Any]] = []
            advance = progress("copying store objects", len(facts.store_keys))
            for key in facts.store_keys:
                size = target.put_store_object(store.root, key, stats, link=link)
                objects.append({"sha256": key, "size": size})
                advance(1)
            file_stats = CopyStats()
            files = _copy_home_files(
                settings, target, partial, file_stats, progress, include_quarantine
            )
            set_files = _write_reasons(partial, settings, include_quarantine)
            sync_filesystem(target.root)  # every object durable before the manifest names it
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "id": backup_id,
                "created_at": created.isoformat(),
                "medai_version": medai.__version__,
                "home": str(settings.resolved_home),
                "database": {
                    "kind": kind,
                    "file": dump.name,
                    "sha256": hash_file(dump),
                    "size": dump.stat().st_size,
                    "source": shown_url(url) if kind == "postgresql" else "catalog.db",
                },
                "anchor": str(facts.head),
                "campaign": facts.campaign,
                "key_fingerprint": facts.key_fingerprint,
                "counts": facts.counts,
                "objects": objects,
                "files": files,
                "set_files": set_files,
                "quarantine": {"raw_included": include_quarantine},
                "copied": {
                    "objects_copied": stats.copied,
                    "objects_present": stats.present,
                    "bytes_copied": stats.bytes_copied,
                    "files_copied": file_stats.copied,
                    "files_present": file_stats.present,
                    "file_bytes_copied": file_stats.bytes_copied,
                },
                "not_included": list(NOT_INCLUDED),
            }
            finished = target.finish_set(partial, manifest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    result = CreateResult(
        id=backup_id,
        path=finished.path,
        database=kind,
        anchor=str(facts.head),
        key_fingerprint=facts.key_fingerprint,
        counts=facts.counts,
        objects=len(objects),
        objects_copied=stats.copied,
        objects_present=stats.present,
        bytes_copied=stats.bytes_copied,
        files=len(files),
        files_copied=file_stats.copied,
        seconds=0.0,
    )
    if keep_daily is not None or keep_weekly is not None:
        result.pruned = prune_backups(
            dest, keep_daily=keep_daily or 0, keep_weekly=keep_weekly or 0
        ).removed
    _audit_created(settings, result, target.root, actor)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _copy_home_files(
    settings: Settings,
    target: BackupDest,
    partial: Path,
    stats: CopyStats,
    progress: Phase,
    include_quarantine: bool,
) -> list[dict[str, Any]]:
    sources = _home_files(settings)
    if include_quarantine:
        root = settings.resolved_quarantine_dir
        if root.is_dir():
            sources += [
                (f"quarantine/{path.relative_to(root).as_posix()}", path)
                for path in sorted(root.glob("[0-9a-f][0-9a-f]/*"))
                if path.is_file()
            ]
    mlflow_db = _mlflow_sqlite(settings)
    files: list[dict[str, Any]] = []
    advance = progress("copying home files", len(sources) + (mlflow_db is not None))
    if mlflow_db is not None:
        copy = partial / "mlflow.db.tmp"
        sqlite_copy(mlflow_db, copy)
        key, size = target.put_file(copy, stats)
        copy.unlink()
        files.append({"path": "mlflow.db", "sha256": key, "size": size, "mode": 0o600})
        advance(1)
    for name, source in sources:
        try:
            mode = source.stat().st_mode & 0o777
            key, size = target.put_file(source, stats)
        except FileNotFoundError:  # removed since it was listed (not in the dumped catalog)
            advance(1)
            continue
        files.append({"path": name, "sha256": key, "size": size, "mode": mode})
        advance(1)
    return files


def _write_reasons(partial: Path, settings: Settings, include_quarantine: bool) -> list[Any]:
    reasons = [] if include_quarantine else _quarantine_reasons(settings.resolved_quarantine_dir)
    path = partial / REASONS_FILE
    path.write_text(json.dumps(reasons, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    dump = next(p for p in partial.iterdir() if p.name.startswith("catalog."))
    return [
        {"name": p.name, "sha256": hash_file(p), "size": p.stat().st_size} for p in (dump, path)
    ]


def _audit_created(settings: Settings, result: CreateResult, dest: Path, actor: str | None) -> None:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with audited_transaction(engine) as session:
            append_audit(
                session,
                actor=actor or actors.operator(),
                action=BACKUP_CREATED,
                subject=result.id,
                details={
                    "backup_id": result.id,
                    "destination": str(dest),
                    "database": result.database,
                    "instances": result.counts.get("instances", 0),
                    "objects": result.objects,
                    "objects_copied": result.objects_copied,
                    "objects_present": result.objects_present,
                    "bytes_copied": result.bytes_copied,
                    "anchor": result.anchor,
                    "key_fingerprint": result.key_fingerprint,
                    "pruned": result.pruned,
                },
            )
    finally:
        engine.dispose()


# -- list and prune ------------------------------------------------------------------------


def list_backups(dest: Path) -> list[dict[str, Any]]:
    """The sets in ``dest``, oldest first, without their object lists."""
    target = BackupDest(dest)
    target.require()
    return [s.summary() for s in target.sets()]


@dataclass
class PruneResult:
    """What a prune removed."""

    kept: list[str]
    removed: list[str]
    objects_freed: int
    bytes_freed: int


def prune_backups(dest: Path, *, keep_daily: int, keep_weekly: int) -> PruneResult:
    """Remove the sets the retention does not keep, then the objects no set needs.

    The newest set is always kept; see :func:`medai.ops.backup_set.select_kept`.
    """
    if keep_daily < 0 or keep_weekly < 0:
        raise BackupError("--keep-daily and --keep-weekly must be 0 or more")
    target = BackupDest(dest)
    target.require()
    with target.locked(exclusive=True):
        target.remove_partials()
        sets = target.sets()
        kept = select_kept(
            [(s.id, s.created_at) for s in sets], keep_daily=keep_daily, keep_weekly=keep_weekly
        )
        removed = [s for s in sets if s.id not in kept]
        for backup in removed:
            shutil.rmtree(backup.path)
        needed: set[str] = set()
        for backup in sets:
            if backup.id in kept:
                needed |= backup.referenced()
        freed, freed_bytes = target.collect_garbage(needed) if removed else (0, 0)
    return PruneResult(
        kept=[s.id for s in sets if s.id in kept],
        removed=[s.id for s in removed],
        objects_freed=freed,
        bytes_freed=freed_bytes,
    )
