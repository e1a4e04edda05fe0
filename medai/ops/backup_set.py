"""A backup destination on disk: its shared object area, its backup sets, their manifests.

Layout of a destination ``DEST``::

    DEST/MEDAI-BACKUP              marker (JSON: format); a folder without it is never written
    DEST/.lock                     flock'ed by create and prune (exclusive), verify and restore
    DEST/objects/<aa>/<bb>/<sha>   every file of every set, by the sha256 of its bytes (0444):
                                   the store's objects and the home's files (snapshot manifests,
                                   MLflow, serving keys); shared, so a second backup copies
                                   only what no earlier set holds
    DEST/<id>/manifest.json        one backup set: what it holds, with hashes and sizes
    DEST/<id>/catalog.sqlite|.pgdump   the catalog's consistent dump (set-specific)
    DEST/.partial-<id>/            a set being written; renamed to <id> once its manifest is

Nothing here touches a catalog: this module reads and writes files only.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medai.errors import BackupError
from medai.store import fsync_dir

__all__ = [
    "FORMAT",
    "MANIFEST",
    "BackupDest",
    "BackupSet",
    "CopyStats",
    "Phase",
    "check_object",
    "hash_file",
    "new_backup_id",
    "no_progress",
    "select_kept",
    "sync_filesystem",
]

FORMAT = 1
"""Version of the layout and the manifest; a reader refuses a newer one."""
MANIFEST = "manifest.json"
_MARKER = "MEDAI-BACKUP"
_LOCK = ".lock"
_OBJECTS = "objects"
_PARTIAL = ".partial-"
_KEY = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{4}")
_CHUNK = 1024 * 1024

Phase = Callable[[str, int], Callable[[int], None]]
"""Progress: ``phase(description, total)`` starts a phase and returns ``advance(n)``."""


def no_progress(description: str, total: int) -> Callable[[int], None]:
    """A :data:`Phase` that shows nothing."""
    del description, total
    return lambda n: None


def sync_filesystem(path: Path) -> None:
    """Flush every written file of the filesystem holding ``path`` (Linux ``syncfs``).

    One call instead of an fsync per copied object; elsewhere, the whole system's ``sync``.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def hash_file(path: Path) -> str:
    """The sha256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def new_backup_id(now: dt.datetime) -> str:
    """A backup id: the UTC time, sortable, and 4 random hex digits (``20261206T020000Z-1a2b``)."""
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


@dataclass
class CopyStats:
    """What one copy into the object area did."""

    copied: int = 0
    present: int = 0
    bytes_copied: int = 0


@dataclass(frozen=True)
class BackupSet:
    """One complete backup set: its folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(str(self.manifest["created_at"]))

    def referenced(self) -> set[str]:
        """Every object key this set needs (store objects and files)."""
        keys = {str(o["sha256"]) for o in self.manifest.get("objects", [])}
        keys |= {str(f["sha256"]) for f in self.manifest.get("files", [])}
        return keys

    def summary(self) -> dict[str, Any]:
        """The manifest without its long lists, for ``list``."""
        shown = {k: v for k, v in self.manifest.items() if k not in {"objects", "files"}}
        shown["object_count"] = len(self.manifest.get("objects", []))
        shown["object_bytes"] = sum(int(o["size"]) for o in self.manifest.get("objects", []))
        shown["file_count"] = len(self.manifest.get("files", []))
        return shown


@dataclass
class BackupDest:
    """A backup destination folder (see the module docstring)."""

    root: Path
    _lock_fd: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().absolute()
        self._objects_text = str(self.root / _OBJECTS)

    # -- the folder itself ----------------------------------------------------------------

    @property
    def objects(self) -> Path:
        return self.root / _OBJECTS

    def is_backup_dest(self) -> bool:
        """Whether ``root`` carries the marker of a backup destination."""
        return (self.root / _MARKER).is_file()

    def require(self) -> None:
        """Refuse a folder that is not a backup destination (a mistyped path)."""
        if not self.root.is_dir():
            raise BackupError(f"{self.root} does not exist: no backup is there")
        if not self.is_backup_dest():
            raise BackupError(
                f"{self.root} is not a medai backup destination (no {_MARKER} file in it)"
            )
        marker = json.loads((self.root / _MARKER).read_text(encoding="utf-8"))
        if int(marker.get("format", 0)) > FORMAT:
            raise BackupError(
                f"{self.root} was written by a newer medai (format {marker['format']}): "
                "upgrade medai to read it"
            )

    def initialize(self) -> None:
        """Make ``root`` a destination: it must be missing, empty, or one already (0700)."""
        if self.root.exists() and not self.root.is_dir():
            raise BackupError(f"{self.root} is a file, not a folder for backups")
        if self.root.is_dir() and not self.is_backup_dest() and any(self.root.iterdir()):
            raise BackupError(
                f"{self.root} is not empty and not a medai backup destination; give an empty "
                "or new folder (backups never write into another folder's files)"
            )
        # The sets hold the serving keys and the de-identified collection: the owner only.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        if not self.is_backup_dest():
            marker = json.dumps({"format": FORMAT, "kind": "medai backup destination"})
            (self.root / _MARKER).write_text(marker + "\n", encoding="utf-8")
        self.objects.mkdir(exist_ok=True, mode=0o700)

    @contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the destination's lock: one writer (create, prune) or several readers."""
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupError(
                    f"another medai backup command is working in {self.root}; wait for it"
                ) from None
            yield
        finally:
            os.close(fd)

    # -- sets -----------------------------------------------------------------------------

    def sets(self) -> list[BackupSet]:
        """The complete sets, oldest first (a folder without a readable manifest is skipped)."""
        found: list[BackupSet] = []
        for entry in sorted(self.root.iterdir()):
            if not (entry.is_dir() and _ID.fullmatch(entry.name)):
                continue
            try:
                manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and manifest.get("id") == entry.name:
                found.append(BackupSet(entry, manifest))
        return sorted(found, key=lambda s: (s.created_at, s.id))

    def get(self, backup_id: str | None) -> BackupSet:
        """The set ``backup_id``, or the newest one."""
        sets = self.sets()
        if not sets:
            raise BackupError(f"{self.root} holds no complete backup yet")
        if backup_id is None:
            return sets[-1]
        for candidate in sets:
            if candidate.id == backup_id:
                return candidate
        raise BackupError(
            f"no backup {backup_id!r} in {self.root}; there are: " + ", ".join(s.id for s in sets)
        )

    def start_set(self, backup_id: str) -> Path:
        """A fresh partial folder for a set being written."""
        partial = self.root / f"{_PARTIAL}{backup_id}"
        partial.mkdir(mode=0o700)
        return partial

    def finish_set(self, partial: Path, manifest: dict[str, Any]) -> BackupSet:
        """Write the manifest last, durably, then give the set its name."""
        # Compact: a set of a million objects has a manifest of a million entries.
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n"
        target = partial / MANIFEST
        with target.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(partial)
        final = self.root / str(manifest["id"])
        os.replace(partial, final)
        fsync_dir(self.root)
        return BackupSet(final, manifest)

    def remove_partials(self) -> int:
        """Remove sets an interrupted create left behind."""
        removed = 0
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name.startswith(_PARTIAL):
                shutil.rmtree(entry)
                removed += 1
        return removed

    # -- the object area ------------------------------------------------------------------

    def object_path(self, key: str) -> Path:
        """Where object ``key`` lives in the shared area."""
        if not _KEY.fullmatch(key):
            raise BackupError(f"not an object key: {key!r}")
        return self.objects / key[:2] / key[2:4] / key

    def has_object(self, key: str, size: int) -> bool:
        """Whether the area holds ``key`` at its size (the content is checked by verify)."""
        try:
            return self.object_path(key).stat().st_size == size
        except FileNotFoundError:
            return False

    def put_store_object(
        self, store_root: Path, key: str, stats: CopyStats, *, link: bool = False
    ) -> int:
        """Copy store object ``key`` from ``store_root`` unless the area holds it; its size.

        The fast path of an incremental backup: one ``stat`` of the area's file, with plain
        strings (an object already there is complete, since it was renamed into place whole).
        """
        if not _KEY.fullmatch(key):
            raise BackupError(f"the catalog names an invalid store key: {key!r}")
        relative = f"{key[:2]}/{key[2:4]}/{key}"
        try:
            size = os.stat(f"{self._objects_text}/{relative}").st_size
        except FileNotFoundError:
            source = store_root / relative
            if not source.is_file():
                raise BackupError(
                    f"store object {key} is referenced by the catalog but missing from "
                    f"{store_root}; run `medai collect verify`"
                ) from None
            return self.put_file(source, stats, key=key, link=link)[1]
        stats.present += 1
        return size

    def put_file(
        self, source: Path, stats: CopyStats, *, key: str | None = None, link: bool = False
    ) -> tuple[str, int]:
        """Copy ``source`` into the area unless it holds it already; return (key, size).

        The bytes are hashed as they are copied; with ``key`` (a store object's name) a
        source that does not hash to it is refused: a backup never carries a damaged object
        as a good one. ``link``: hard-link instead of copying where the filesystem allows
        (a link shares the store's inode, so it guards against deletion, not against
        damage to the disk). Files are not fsynced one by one; the caller syncs once.
        """
        size = source.stat().st_size
        if key is not None and self.has_object(key, size):
            stats.present += 1
            return key, size
        tmp_dir = self.objects / ".tmp"
        tmp_dir.mkdir(exist_ok=True, mode=0o700)
        tmp = tmp_dir / f"{secrets.token_hex(8)}.tmp"
        digest = hashlib.sha256()
        if link and key is not None:
            digest.update(source.read_bytes())
        else:
            with source.open("rb") as src, tmp.open("xb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
        actual = digest.hexdigest()
        if key is not None and actual != key:
            tmp.unlink(missing_ok=True)
            raise BackupError(
                f"store object {key} does not match its hash; run `medai collect verify` "
                "and repair the store before backing it up"
            )
        final = self.object_path(actual)
        if self.has_object(actual, size):
            tmp.unlink(missing_ok=True)
            stats.present += 1
            return actual, size
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if link and key is not None:
            try:
                os.link(source, final)
            except FileExistsError:
                pass
            except OSError:  # another filesystem: copy after all
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        stats.copied += 1
        stats.bytes_copied += size
        return actual, size

    def object_keys(self) -> Iterator[str]:
        """Every object in the area."""
        if not self.objects.is_dir():
            return
        for first in sorted(self.objects.iterdir()):
            if not first.is_dir() or first.name == ".tmp":
                continue
            for second in sorted(first.iterdir()):
                for entry in sorted(second.iterdir()):
                    if _KEY.fullmatch(entry.name):
                        yield entry.name

    def collect_garbage(self, keep: set[str]) -> tuple[int, int]:
        """Delete objects no remaining set refers to; return (objects, bytes) freed."""
        freed = freed_bytes = 0
        for key in list(self.object_keys()):
            if key in keep:
                continue
            path = self.object_path(key)
            freed_bytes += path.stat().st_size
            path.unlink()
            freed += 1
        shutil.rmtree(self.objects / ".tmp", ignore_errors=True)
        return freed, freed_bytes


def check_object(dest: BackupDest, key: str, size: int) -> str | None:
    """Why object ``key`` is not good in ``dest`` (None when it re-hashes to its key)."""
    path = dest.object_path(key)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return f"object {key} is missing"
    if actual_size != size:
        return f"object {key} has {actual_size} bytes, the manifest says {size}"
    actual = hash_file(path)
    if actual != key:
        return f"object {key} is damaged: its bytes hash to {actual}"
    return None


def select_kept(
    sets: Iterable[tuple[str, dt.datetime]], *, keep_daily: int, keep_weekly: int
) -> set[str]:
    """The ids a retention of ``keep_daily`` days and ``keep_weekly`` weeks keeps.

    The newest set of each of the newest ``keep_daily`` days that have a backup is kept, and
    the newest of each of the newest ``keep_weekly`` ISO weeks that have one; the newest set
    of all is always kept. Days and weeks are UTC.
    """
    ordered = sorted(sets, key=lambda s: s[1], reverse=True)
    if not ordered:
        return set()
    kept = {ordered[0][0]}
    for count, bucket in (
        (keep_daily, lambda t: t.astimezone(dt.UTC).date().isoformat()),
        (keep_weekly, lambda t: "{}-W{:02d}".format(*t.astimezone(dt.UTC).isocalendar()[:2])),
    ):
        seen: list[str] = []
        for backup_id, at in ordered:
            name = bucket(at)
            if name in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(name)
            kept.add(backup_id)
    return kept
