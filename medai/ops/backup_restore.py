"""``medai backup restore``: a backup set into a new home (and a new database), checked."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from medai.audit import actors
from medai.audit.anchor import parse_anchor, verify_against_anchor
from medai.audit.chain import append_audit
from medai.audit.transaction import audited_transaction
from medai.catalog.db import create_engine_for, upgrade
from medai.catalog.models import QuarantineEntry, utcnow
from medai.config import Settings
from medai.errors import BackupError
from medai.keyfile import key_fingerprint, load_key
from medai.ops.backup import BACKUP_RESTORED
from medai.ops.backup_catalog import (
    database_kind,
    libpq,
    pg_target_empty,
    run_tool,
    shown_url,
)
from medai.ops.backup_set import BackupDest, BackupSet, Phase, no_progress, sync_filesystem
from medai.ops.backup_verify import check_set_files
from medai.store import ObjectStore

__all__ = ["KeyStatus", "RestoreResult", "restore_backup"]

KeyStatus = Literal["matches", "missing", "none-recorded"]


@dataclass
class RestoreResult:
    """What ``restore_backup`` did, and what is left for the operator to do."""

    id: str
    home: Path
    database_url: str
    anchor: str
    key_fingerprint: str | None
    key_status: KeyStatus
    counts: dict[str, int]
    objects: int
    files: int
    quarantine_released: int
    seconds: float


def _empty_except_key(home: Path, key_file: Path) -> None:
    if home.exists() and not home.is_dir():
        raise BackupError(f"{home} is a file; restore into a new or empty folder")
    if home.is_dir():
        others = [p for p in home.iterdir() if p != key_file]
        if others:
            raise BackupError(
                f"{home} is not empty: restore into a new folder (it may hold only the "
                "campaign key restored from its escrow)"
            )


def _check_key(key_file: Path, recorded: str | None) -> KeyStatus:
    if not key_file.exists():
        return "missing"
    found = key_fingerprint(load_key(key_file))
    if recorded is None:
        return "none-recorded"
    if found != recorded:
        raise BackupError(
            f"the key file {key_file} holds another key (fingerprint {found}) than the one "
            f"this backup's campaign uses (fingerprint {recorded}); remove it and restore the "
            "campaign's own key from its escrow with `medai campaign key import ESCROW`"
        )
    return "matches"


def _copy_verified(source: Path, key: str, final: Path, mode: int) -> None:
    import hashlib

    final.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    digest = hashlib.sha256()
    tmp = final.with_name(f".{final.name}.restore")
    with source.open("rb") as src, tmp.open("wb") as dst:
        while chunk := src.read(1024 * 1024):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != key:
        tmp.unlink()
        raise BackupError(
            f"backup object {key} is damaged; run `medai backup verify` and restore an older "
            "set with --id"
        )
    os.chmod(tmp, mode)
    os.replace(tmp, final)


def _rewrite_mlflow_home(db_path: Path, old_home: str, new_home: Path) -> None:
    """Point the restored MLflow store's artifact locations at the new home."""
    replacements = [
        (Path(old_home).as_uri(), new_home.as_uri()),
        (old_home, str(new_home)),
    ]
    conn = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [
                r[1]
                for r in conn.execute(f'PRAGMA table_info("{table}")')
                if "CHAR" in str(r[2]).upper() or "TEXT" in str(r[2]).upper()
            ]
            for column in columns:
                for old, new in replacements:
                    conn.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                        f'WHERE "{column}" LIKE ?',
                        (old, new, f"%{old}%"),
                    )
        conn.commit()
    finally:
        conn.close()


def restore_backup(
    dest: Path,
    home: Path,
    *,
    backup_id: str | None = None,
    database_url: str | None = None,
    actor: str | None = None,
    progress: Phase = no_progress,
) -> RestoreResult:
    """Restore a set of ``dest`` into the new home ``home`` (and ``database_url``).

    Parameters
    ----------
    dest
        The backup destination.
    home
        A new or empty folder (it may already hold the campaign key restored from its
        escrow, which must then be the backup's key).
    backup_id
        The set; the newest by default.
    database_url
        For a PostgreSQL backup: an existing, empty database to restore the catalog into
        (required). A SQLite backup becomes ``<home>/catalog.db``.

    Returns
    -------
    RestoreResult
    """
    import time

    started = time.monotonic()
    target = BackupDest(dest)
    target.require()
    home = Path(home).expanduser().absolute()
    settings = Settings(
        home=home,
        database_url=database_url,
        store_dir=None,
        quarantine_dir=None,
        key_file=None,
        mlflow_tracking_uri=None,
        serving_key_file=None,
    )
    with target.locked(exclusive=False):
        backup = target.get(backup_id)
        manifest = backup.manifest
        kind = manifest["database"]["kind"]
        if kind == "postgresql" and database_url is None:
            raise BackupError(
                f"backup {backup.id} holds a PostgreSQL catalog: name an empty database to "
                "restore it into with --database-url postgresql+psycopg://HOST/DB"
            )
        if database_url is not None and database_kind(database_url) != kind:
            raise BackupError(
                f"backup {backup.id} holds a {kind} catalog; it restores into {kind} only"
            )
        _empty_except_key(home, settings.resolved_key_file)
        key_status = _check_key(settings.resolved_key_file, manifest.get("key_fingerprint"))
        problems = check_set_files(backup)
        if problems:
            raise BackupError(f"backup {backup.id} cannot be restored: {problems[0]}")
        if kind == "postgresql":
            assert database_url is not None
            pg_target_empty(database_url)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = ObjectStore(settings.resolved_store_dir)
        objects = manifest.get("objects", [])
        advance = progress("restoring store objects", len(objects))
        for entry in objects:
            key = str(entry["sha256"])
            _copy_verified(target.object_path(key), key, store.path(key), 0o444)
            advance(1)
        files = manifest.get("files", [])
        advance = progress("restoring home files", len(files))
        for entry in files:
            final = home / str(entry["path"])
            if not final.resolve().is_relative_to(home):
                raise BackupError(f"the manifest names a path outside the home: {entry['path']}")
            _copy_verified(
                target.object_path(str(entry["sha256"])), str(entry["sha256"]), final,
                int(entry.get("mode", 0o600)),
            )  # fmt: skip
            advance(1)
        if (home / "quarantine").is_dir():
            os.chmod(home / "quarantine", 0o700)
        if (home / "mlflow.db").is_file() and manifest.get("home"):
            _rewrite_mlflow_home(home / "mlflow.db", str(manifest["home"]), home)
        dump = backup.path / str(manifest["database"]["file"])
        advance = progress("restoring the catalog", 1)
        if kind == "sqlite":
            catalog = home / "catalog.db"
            shutil.copyfile(dump, catalog)
            os.chmod(catalog, 0o600)
        else:
            assert database_url is not None
            env, name = libpq(database_url)
            run_tool(
                ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-d", name,
                 str(dump)],
                env,
                "restore the catalog",
            )  # fmt: skip
        advance(1)
        sync_filesystem(home)
    released = _finish_restore(settings, backup, key_status, actor)
    return RestoreResult(
        id=backup.id,
        home=home,
        database_url=shown_url(settings.resolved_database_url),
        anchor=str(manifest["anchor"]),
        key_fingerprint=manifest.get("key_fingerprint"),
        key_status=key_status,
        counts=dict(manifest.get("counts", {})),
        objects=len(objects),
        files=len(files),
        quarantine_released=released,
        seconds=round(time.monotonic() - started, 3),
    )


def _finish_restore(
    settings: Settings, backup: BackupSet, key_status: str, actor: str | None
) -> int:
    """Migrate if needed, release quarantine rows without files, audit, check the anchor."""
    manifest = backup.manifest
    engine = create_engine_for(settings.resolved_database_url)
    try:
        upgrade(engine)
        quarantine_root = settings.resolved_quarantine_dir
        with audited_transaction(engine) as session:
            anchor = parse_anchor(str(manifest["anchor"]))
            report = verify_against_anchor(session, anchor)
            if not report.ok:
                raise BackupError(f"the restored audit chain does not verify: {report.problem}")
            released = 0
            now = utcnow()
            for entry in session.scalars(
                sa.select(QuarantineEntry).where(QuarantineEntry.released_at.is_(None))
            ):
                if not (quarantine_root / entry.relative_path).exists():
                    entry.released_at = now
                    released += 1
            append_audit(
                session,
                actor=actor or actors.operator(),
                action=BACKUP_RESTORED,
                subject=backup.id,
                details={
                    "backup_id": backup.id,
                    "backup_created_at": manifest["created_at"],
                    "anchor": manifest["anchor"],
                    "medai_version": manifest.get("medai_version"),
                    "instances": manifest.get("counts", {}).get("instances", 0),
                    "key_fingerprint": manifest.get("key_fingerprint"),
                    "key_status": key_status,
                    "quarantine_released_not_in_backup": released,
                },
            )
    finally:
        engine.dispose()
    return released
