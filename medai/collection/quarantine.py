"""The quarantine: raw files that could not be accepted, kept private (0700) until purged.

This is the only place raw, possibly identifying files are kept. Each file is
``<root>/<sha[:2]>/<sha>.raw`` with a JSON sidecar ``<sha>.json`` saying why it
was refused and where it came from. The catalog's ``QuarantineEntry`` row is
written by the ingest pipeline, not here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medai.errors import Rejected
from medai.store import fsync_dir, write_atomically

__all__ = ["QuarantineSidecar", "Quarantine", "QuarantinedFile"]

logger = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_TMP_DIR = ".tmp"


@dataclass(frozen=True)
class QuarantinedFile:
    """Where :meth:`Quarantine.put` kept a file."""

    sha256: str
    relative_path: str
    byte_size: int


@dataclass(frozen=True)
class QuarantineSidecar:
    """The facts recorded beside a quarantined file (its ``.json`` sidecar)."""

    sha256: str
    relative_path: str
    byte_size: int
    reason_code: str
    reason: str
    site: str
    source: str
    original_name: str | None
    received_at: dt.datetime


class Quarantine:
    """Private storage for refused files, one per sha256, with a retention purge.

    Parameters
    ----------
    root
        Directory of the quarantine; created with mode 0700, and tightened to
        0700 if it exists with looser permissions.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        if stat.S_IMODE(self.root.stat().st_mode) & 0o077:
            logger.warning("quarantine %s was readable by others; restricting it to 0700", root)
            os.chmod(self.root, _DIR_MODE)
        self._tmp = self.root / _TMP_DIR

    def _raw_path(self, sha256: str) -> Path:
        if not _SHA.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.raw"

    def put(
        self,
        raw: bytes,
        *,
        reason: Rejected,
        site: str,
        source: str,
        original_name: str | None = None,
    ) -> QuarantinedFile:
        """Keep ``raw`` and why it was refused; putting the same bytes again is a no-op.

        Parameters
        ----------
        raw
            The file as received.
        reason
            The error that refused it; its ``reason_code`` and message are recorded.
        site
            Campaign site id that sent it.
        source
            Receiver kind, e.g. ``folder``, ``cstore``, ``stow-rs``.
        original_name
            File name at the source, if any (may itself be identifying, which is
            why it is kept here and not in the catalog).

        Returns
        -------
        QuarantinedFile
        """
        sha256 = hashlib.sha256(raw).hexdigest()
        raw_path = self._raw_path(sha256)
        sidecar_path = raw_path.with_suffix(".json")
        found = QuarantinedFile(sha256, self._relative(raw_path), len(raw))
        if not raw_path.exists():
            self._write(raw, raw_path)
        if not sidecar_path.exists():
            # Written after the raw file: a crash in between leaves a raw file
            # without sidecar, which purge() still removes (by its mtime).
            sidecar = {
                "sha256": sha256,
                "relative_path": found.relative_path,
                "byte_size": len(raw),
                "reason_code": reason.reason_code,
                "reason": str(reason),
                "site": site,
                "source": source,
                "original_name": original_name,
                "received_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            }
            text = json.dumps(sidecar, indent=2, sort_keys=True, ensure_ascii=False)
            self._write(text.encode("utf-8"), sidecar_path)
            logger.info("quarantined %s from site %s: %s", sha256, site, reason.reason_code)
        return found

    def _write(self, data: bytes, path: Path) -> None:
        write_atomically(data, path, self._tmp, mode=_FILE_MODE, dir_mode=_DIR_MODE)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read(self, sha256: str) -> bytes:
        """Return the raw bytes of a quarantined file (e.g. to re-offer it after a fix).

        Parameters
        ----------
        sha256
            The file's sha256.

        Returns
        -------
        bytes
        """
        return self._raw_path(sha256).read_bytes()

    def entries(self) -> Iterator[QuarantineSidecar]:
        """Iterate over the sidecars of all quarantined files, in sha256 order.

        Yields
        ------
        QuarantineSidecar
        """
        for sidecar_path in self._sidecar_paths():
            try:
                yield _parse_sidecar(sidecar_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping unreadable quarantine sidecar %s: %s", sidecar_path, exc)

    def _sidecar_paths(self) -> Iterator[Path]:
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir() and _HEX2.fullmatch(directory.name):
                yield from sorted(directory.glob("*.json"))

    def remove(self, sha256: str) -> bool:
        """Delete a quarantined file and its sidecar.

        Parameters
        ----------
        sha256
            The file's sha256.

        Returns
        -------
        bool
            Whether anything was there to delete.
        """
        raw_path = self._raw_path(sha256)
        removed = False
        for path in (raw_path, raw_path.with_suffix(".json")):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                continue
        if removed:
            fsync_dir(raw_path.parent)
        return removed

    def purge(self, older_than: dt.datetime) -> int:
        """Delete every file received before ``older_than`` (the retention limit).

        Raw files left without a sidecar by a crash, and stale temporary
        files, are judged by their modification time.

        Parameters
        ----------
        older_than
            Timezone-aware cutoff, e.g. now minus ``quarantine_retention_days``.

        Returns
        -------
        int
            How many quarantined files were deleted.
        """
        if older_than.tzinfo is None:
            raise ValueError("older_than must be timezone-aware")
        cutoff = older_than.timestamp()
        purged = 0
        for entry in list(self.entries()):
            if entry.received_at.timestamp() < cutoff and self.remove(entry.sha256):
                purged += 1
        for directory in [self._tmp, *self.root.glob("??")]:
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                orphan = path.suffix == ".raw" and not path.with_suffix(".json").exists()
                stale = orphan or directory == self._tmp
                if stale and path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    purged += 1 if orphan else 0
        if purged:
            logger.info("purged %d quarantined files received before %s", purged, older_than)
        return purged


def _parse_sidecar(path: Path) -> QuarantineSidecar:
    data = json.loads(path.read_text(encoding="utf-8"))
    received_at = dt.datetime.fromisoformat(data["received_at"])
    if received_at.tzinfo is None:
        raise ValueError("received_at without a timezone")
    return QuarantineSidecar(
        sha256=str(data["sha256"]),
        relative_path=str(data["relative_path"]),
        byte_size=int(data["byte_size"]),
        reason_code=str(data["reason_code"]),
        reason=str(data["reason"]),
        site=str(data["site"]),
        source=str(data["source"]),
        original_name=None if data["original_name"] is None else str(data["original_name"]),
        received_at=received_at,
    )
