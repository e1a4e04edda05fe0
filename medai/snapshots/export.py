"""Exporting a snapshot as a de-identified DICOM tree with its manifest, for a research partner."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medai.audit import append_audit, audited_transaction
from medai.audit.actors import operator
from medai.config import Settings, get_settings
from medai.errors import SnapshotError
from medai.snapshots.manifest import MANIFEST_NAME, read_verified
from medai.snapshots.records import get_snapshot, open_catalog
from medai.store import ObjectStore

__all__ = ["ExportResult", "export_snapshot"]

# Path components of the exported tree: pseudonyms (P + base32) and 2.25.<int> UIDs.
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_snapshot` wrote."""

    name: str
    out_dir: Path
    files: int
    bytes: int
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out_dir": str(self.out_dir),
            "files": self.files,
            "bytes": self.bytes,
            "content_hash": self.content_hash,
        }


def export_snapshot(
    name: str,
    out_dir: Path | str,
    *,
    settings: Settings | None = None,
    actor: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write snapshot ``name`` as a de-identified DICOM tree for a research partner.

    Files go to ``out_dir/<patient>/<study_uid>/<series_uid>/<sop_instance_uid>.dcm``,
    copied from the store (each checked against its sha256 key), beside
    ``manifest.parquet`` (the snapshot's own file), ``manifest.csv`` (the same rows with
    a ``file`` column, the path relative to ``out_dir``) and ``snapshot.json`` (name,
    content hash, counts, query, seed, split fractions, creation time; not who created
    it). A ``snapshot.export`` audit record is appended.

    Parameters
    ----------
    name
        The snapshot.
    out_dir
        A new or empty directory.
    settings, actor
        As for :func:`create_snapshot`.
    progress
        Called as ``progress(done, total)`` instances while copying.

    Raises
    ------
    SnapshotError
        If ``out_dir`` is not empty (or is a file).
    SnapshotTampered
        If the manifest was altered.
    medai.errors.StoreCorrupt
        If a stored file is missing or does not match its key.
    """
    settings = settings or get_settings()
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SnapshotError(f"{out} is not an empty directory: export into a new or empty one")
    info = get_snapshot(name, settings)
    manifest_bytes, table = read_verified(info.name, info.manifest, info.content_hash)
    records = table.to_pylist()
    store = ObjectStore(settings.resolved_store_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = copied = 0
    files: list[str] = []
    for done, record in enumerate(records, start=1):
        parts = [record[c] for c in ("patient", "study_uid", "series_uid", "sop_instance_uid")]
        for part in parts:
            if not isinstance(part, str) or not _SAFE_COMPONENT.fullmatch(part):
                raise SnapshotError(f"unsafe identifier {part!r} in snapshot {name!r}")
        relative = "/".join(parts[:3]) + f"/{parts[3]}.dcm"
        targets = [(record["store_key"], relative)]
        if record.get("store_keys"):
            # A series row: every slice, numbered in slice order; its file is the folder.
            relative = "/".join(parts[:3])
            keys = str(record["store_keys"]).split("\n")
            targets = [(key, f"{relative}/{n:04d}.dcm") for n, key in enumerate(keys, start=1)]
        for key, path in targets:
            data = store.read(key, verify=True)  # StoreCorrupt on mismatch
            target = out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written += len(data)
            copied += 1
        files.append(relative)
        if progress is not None:
            progress(done, len(records))
    (out / MANIFEST_NAME).write_bytes(manifest_bytes)
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*table.schema.names, "file"])
        for record, relative in zip(records, files, strict=True):
            writer.writerow([("" if v is None else v) for v in record.values()] + [relative])
    description = info.to_dict()
    description["manifest"] = MANIFEST_NAME
    del description["actor"]  # a staff login name is nothing the partner needs
    description["content_hash_definition"] = (
        "sha256 over the manifest's canonical content (medai.snapshots.manifest."
        "content_hash), not over the parquet bytes"
    )
    (out / "snapshot.json").write_text(
        json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    engine, sessions = open_catalog(settings)
    try:
        with audited_transaction(sessions) as session:
            append_audit(
                session,
                actor=actor or operator(),
                action="snapshot.export",
                subject=name,
                details={"content_hash": info.content_hash, "files": copied, "bytes": written},
            )
    finally:
        engine.dispose()
    return ExportResult(name, out, copied, written, info.content_hash)
