"""Content-addressed object store on the local filesystem, one file per sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medai.errors import StoreCorrupt

__all__ = ["ObjectStore", "StoreProblem", "fsync_dir", "write_atomically"]

logger = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_CHUNK = 1024 * 1024
_TMP_DIR = ".tmp"


@dataclass(frozen=True)
class StoreProblem:
    """An object that is not what its key promises."""

    key: str
    kind: Literal["missing", "corrupt"]
    detail: str


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new or removed file) durable.

    Parameters
    ----------
    path
        The directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue  # another process created it; it made it durable too
        fsync_dir(directory.parent)


def write_atomically(
    data: bytes,
    final: Path,
    tmp_dir: Path,
    *,
    mode: int,
    dir_mode: int = 0o755,
    sync_dir: bool = True,
) -> None:
    """Write ``data`` to ``final`` so that ``final`` is either absent or complete.

    The bytes go to a uniquely named file in ``tmp_dir`` (same filesystem), are
    fsynced, then renamed over ``final``; the directory is fsynced so the rename
    survives a power cut. A crash leaves at most a stray file in ``tmp_dir``.

    Parameters
    ----------
    data
        The content.
    final
        Destination path; its parent directories are created.
    tmp_dir
        Directory for the temporary file; created if missing.
    mode
        Permission bits of the final file.
    dir_mode
        Permission bits of directories created on the way.
    sync_dir
        Fsync ``final``'s directory after the rename; a caller writing many files
        passes False and fsyncs each directory once at the end.
    """
    _make_dirs(tmp_dir, dir_mode)
    _make_dirs(final.parent, dir_mode)
    tmp = tmp_dir / f"{final.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(final.parent)


class ObjectStore:
    """Immutable blobs under ``root/<aa>/<bb>/<sha256>``, keyed by the sha256 of their bytes.

    Writing the same bytes twice stores one file; a file is never visible
    under its key until it is complete and durable. Objects are read-only
    (0444) once written. Safe for several processes writing at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self._tmp = self.root / _TMP_DIR

    def path(self, key: str) -> Path:
        """Where the object ``key`` lives (it may not exist).

        Parameters
        ----------
        key
            64 lowercase hex characters; anything else raises ``ValueError``
            (so a key can never point outside the store).

        Returns
        -------
        pathlib.Path
        """
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a store key (64 lowercase hex characters): {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its key; a no-op when the object exists.

        Parameters
        ----------
        data
            The bytes to store.

        Returns
        -------
        str
            The sha256 hex digest of ``data``.
        """
        key = hashlib.sha256(data).hexdigest()
        final = self.path(key)
        if final.exists():
            return key
        write_atomically(data, final, self._tmp, mode=0o444)
        logger.debug("stored object %s (%d bytes)", key, len(data))
        return key

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several objects; like :meth:`put` each, with one fsync per directory.

        Every object is durable under its key when this returns (each file is
        fsynced before its rename, each directory after all renames into it).

        Parameters
        ----------
        blobs
            The bytes of each object.

        Returns
        -------
        list of str
            The keys, in the order of ``blobs``.
        """
        keys: list[str] = []
        renamed_into: set[Path] = set()
        for data in blobs:
            key = hashlib.sha256(data).hexdigest()
            keys.append(key)
            final = self.path(key)
            if final.exists():
                continue
            write_atomically(data, final, self._tmp, mode=0o444, sync_dir=False)
            renamed_into.add(final.parent)
        for directory in sorted(renamed_into):
            fsync_dir(directory)
        return keys

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` is stored.

        Parameters
        ----------
        key
            The object's key.

        Returns
        -------
        bool
        """
        return self.path(key).is_file()

    def read(self, key: str, *, verify: bool = True) -> bytes:
        """Return the bytes of object ``key``.

        Parameters
        ----------
        key
            The object's key.
        verify
            Re-hash the bytes and raise :class:`~medai.errors.StoreCorrupt`
            when they do not match the key.

        Returns
        -------
        bytes

        Raises
        ------
        FileNotFoundError
            The object is not stored.
        medai.errors.StoreCorrupt
            ``verify`` is on and the content does not hash to ``key``.
        """
        data = self.path(key).read_bytes()
        if verify and hashlib.sha256(data).hexdigest() != key:
            raise StoreCorrupt(f"store object {key} does not match its hash")
        return data

    def keys(self) -> Iterator[str]:
        """Iterate over the stored keys, in sorted order (temporary files excluded).

        Yields
        ------
        str
        """
        if not self.root.is_dir():
            return
        for first in _sorted_subdirs(self.root):
            for second in _sorted_subdirs(first):
                prefix = first.name + second.name
                for entry in sorted(os.scandir(second), key=lambda e: e.name):
                    if _KEY.fullmatch(entry.name) and entry.name.startswith(prefix):
                        yield entry.name

    def delete(self, key: str) -> None:
        """Remove object ``key``; removing a missing object is not an error.

        Parameters
        ----------
        key
            The object's key.
        """
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def verify(self, keys: Iterable[str] | None = None) -> Iterator[StoreProblem]:
        """Re-hash objects and report those that are missing or corrupt.

        Parameters
        ----------
        keys
            Keys to check (e.g. every ``store_key`` in the catalog); by default
            every stored object.

        Yields
        ------
        StoreProblem
            One per object that is missing or does not hash to its key.
        """
        for key in self.keys() if keys is None else keys:
            try:
                actual = _hash_file(self.path(key))
            except FileNotFoundError:
                yield StoreProblem(key, "missing", "no object stored under this key")
                continue
            if actual != key:
                yield StoreProblem(key, "corrupt", f"content hashes to {actual}")

    def clean_tmp(self, older_than_seconds: float = 3600.0) -> int:
        """Remove temporary files a crashed writer left behind.

        Parameters
        ----------
        older_than_seconds
            Only files not modified for this long, so that writes in progress
            in other processes are left alone.

        Returns
        -------
        int
            How many files were removed.
        """
        if not self._tmp.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in os.scandir(self._tmp):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # finished or cleaned by someone else meanwhile
        if removed:
            logger.info("removed %d stale temporary files from %s", removed, self._tmp)
        return removed


def _sorted_subdirs(directory: Path) -> list[Path]:
    return sorted(
        Path(e.path) for e in os.scandir(directory) if e.is_dir() and _HEX2.fullmatch(e.name)
    )


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
