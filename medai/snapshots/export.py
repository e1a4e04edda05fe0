"""Exporting a snapshot: a de-identified DICOM tree with its manifest, or to a destination.

:func:`export_snapshot` writes the partner's tree (patient/study/series folders);
:func:`export_to` sends the instances to a DICOMDIR folder, a STOW-RS server or a C-STORE
node (:mod:`medai.snapshots.destinations`), resumably and verified.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from medai.audit import append_audit, audited_transaction
from medai.audit.actors import operator
from medai.config import Settings, get_settings
from medai.errors import SnapshotError
from medai.snapshots.destinations import (
    ExportItem,
    ExportState,
    PartialSend,
    destination_kind,
)
from medai.snapshots.manifest import MANIFEST_NAME, read_verified
from medai.snapshots.records import SnapshotInfo, get_snapshot, open_catalog
from medai.store import ObjectStore

if TYPE_CHECKING:  # loaded when an export runs: pynetdicom and requests stay out of imports
    from medai.collection.receivers.dicomweb_retry import RetryPolicy
    from medai.snapshots.destinations_remote import CStoreDestination

__all__ = ["DestinationResult", "ExportResult", "export_snapshot", "export_to", "snapshot_keys"]

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
    _write_description(out, info)
    _audit_export(
        settings,
        name,
        actor,
        {"content_hash": info.content_hash, "files": copied, "bytes": written},
    )
    return ExportResult(name, out, copied, written, info.content_hash)


def _write_description(out: Path, info: SnapshotInfo) -> None:
    """``snapshot.json``: what the partner needs to know of the snapshot (not who made it)."""
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


def _audit_export(
    settings: Settings, name: str, actor: str | None, details: dict[str, Any]
) -> None:
    engine, sessions = open_catalog(settings)
    try:
        with audited_transaction(sessions) as session:
            append_audit(
                session,
                actor=actor or operator(),
                action="snapshot.export",
                subject=name,
                details=details,
            )
    finally:
        engine.dispose()


# -- export to a destination: a DICOMDIR folder, a STOW-RS server, a C-STORE node ---------------

_SEND_BATCH = 16  # instances per STOW-RS request / state save
_SEND_BATCH_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class DestinationResult:
    """What :func:`export_to` did: every instance of the snapshot confirmed at ``destination``."""

    name: str
    destination: str  # without credentials
    kind: str  # folder | stow-rs | c-store
    instances: int  # the snapshot's, all confirmed
    sent: int  # by this run
    already: int  # confirmed by an earlier run of the same export
    bytes: int  # sent by this run
    retries: int
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def snapshot_keys(records: list[dict[str, Any]]) -> list[str]:
    """The store keys of a manifest's instances, in manifest order (a series row: its slices)."""
    keys: list[str] = []
    for record in records:
        if record.get("store_keys"):
            keys.extend(str(record["store_keys"]).split("\n"))
        else:
            keys.append(str(record["store_key"]))
    return list(dict.fromkeys(keys))


def _item(key: str, data: bytes) -> ExportItem:
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        return ExportItem(
            key,
            data,
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            str(ds.file_meta.TransferSyntaxUID),
        )
    except (InvalidDicomError, AttributeError, ValueError) as exc:
        raise SnapshotError(
            f"stored instance {key[:12]}… is not a readable DICOM file ({type(exc).__name__})"
        ) from None


def _find_back(destination: CStoreDestination, records: list[dict[str, Any]]) -> set[str]:
    """Store keys of the manifest rows the node does not hold (a series row: all its keys)."""
    lost: set[str] = set()
    by_study: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_study.setdefault(str(record["study_uid"]), []).append(record)
    for study_uid, rows in by_study.items():
        held = destination.find_back(study_uid)
        for record in rows:
            if record.get("store_keys"):
                in_series = sum(1 for series, _ in held if series == record["series_uid"])
                if in_series < int(record["slices"]):
                    lost.update(str(record["store_keys"]).split("\n"))
            elif (str(record["series_uid"]), str(record["sop_instance_uid"])) not in held:
                lost.add(str(record["store_key"]))
    return lost


def export_to(
    name: str,
    dest: str,
    *,
    settings: Settings | None = None,
    actor: str | None = None,
    headers: Mapping[str, str] | None = None,
    ae_title: str = "MEDAI",
    retry: RetryPolicy | None = None,
    ca_file: Path | None = None,
    verify_find: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DestinationResult:
    """Send snapshot ``name`` to ``dest``; resumable, and verified instance by instance.

    ``dest`` is a folder (written as DICOM media with a DICOMDIR, beside
    ``manifest.parquet``, ``manifest.csv`` with each row's File ID, and ``snapshot.json``),
    an ``http(s)://`` DICOMweb root (STOW-RS; ``user:password@`` becomes basic auth) or
    ``AE@HOST:PORT`` (C-STORE, calling as ``ae_title``). See
    :mod:`medai.snapshots.destinations`. Run again after a stop, it sends only what was not
    confirmed. A ``snapshot.export`` audit record is appended once all is confirmed.
    With ``verify_find`` a C-STORE export then asks the node (IMAGE-level C-FIND per study)
    whether it holds every instance; those it lacks are no longer counted as confirmed, so
    the same export run again sends them.

    Raises
    ------
    SnapshotError
        A bad destination, a folder that is not empty, a receiver that refused instances
        (after the others were sent: run again to retry them) or stayed unreachable.
    SnapshotTampered, medai.errors.StoreCorrupt
        As for :func:`export_snapshot`.
    """
    from medai.snapshots.destinations_folder import FolderDestination
    from medai.snapshots.destinations_remote import CStoreDestination, StowDestination

    settings = settings or get_settings()
    info = get_snapshot(name, settings)
    manifest_bytes, table = read_verified(info.name, info.manifest, info.content_hash)
    records = table.to_pylist()
    keys = snapshot_keys(records)
    kind = destination_kind(dest)
    destination: FolderDestination | StowDestination | CStoreDestination
    state: ExportState | None = None
    if kind == "folder":
        destination = FolderDestination(dest)
        confirmed = destination.staged()
    elif kind == "stow-rs":
        destination = StowDestination(dest, headers=headers, retry=retry, ca_file=ca_file)
    else:
        destination = CStoreDestination(dest, ae_title=ae_title, retry=retry)
    if kind != "folder":
        state = ExportState.for_export(
            settings.resolved_home, name, info.content_hash, destination.describe()
        )
        confirmed = set(state.confirmed)
    already = len(confirmed & set(keys))
    store = ObjectStore(settings.resolved_store_dir)
    failed: dict[str, str] = {}
    sent = written = 0
    done = already
    if progress is not None:
        progress(done, len(keys))
    try:
        batch: list[ExportItem] = []
        todo = [key for key in keys if key not in confirmed]
        for position, key in enumerate(todo, start=1):
            batch.append(_item(key, store.read(key, verify=True)))
            if (
                len(batch) < _SEND_BATCH
                and sum(len(i.data) for i in batch) < _SEND_BATCH_BYTES
                and position < len(todo)
            ):
                continue
            try:
                answers = destination.send(batch)
            except PartialSend as partial:  # keep what was confirmed, then stop
                confirmed.update(answer.key for answer in partial.sent if answer.confirmed)
                if state is not None:
                    state.confirmed = set(confirmed)
                    state.save()
                raise partial.error from None
            for item, answer in zip(batch, answers, strict=True):
                if answer.confirmed:
                    confirmed.add(answer.key)
                    failed.pop(answer.key, None)
                    sent += 1
                    written += len(item.data)
                else:
                    failed[answer.key] = answer.reason
                done += 1
            batch = []
            if state is not None:
                state.confirmed, state.failed = set(confirmed), dict(failed)
                state.save()
            if progress is not None:
                progress(done, len(keys))
    finally:
        destination.close()
    if failed:
        reason = sorted(set(failed.values()))[0]
        raise SnapshotError(
            f"{len(failed)} of {len(keys)} instances were not confirmed by "
            f"{destination.describe()} (e.g. {reason}); the others are: run the same export "
            "again to retry these"
        )
    if verify_find and isinstance(destination, CStoreDestination) and state is not None:
        try:
            lost = _find_back(destination, records)
        finally:
            destination.close()
        if lost:
            state.confirmed -= lost
            state.save()
            raise SnapshotError(
                f"{destination.describe()} does not hold {len(lost)} of the {len(keys)} "
                "instances it confirmed: run the same export again to send them again"
            )
    if isinstance(destination, FolderDestination):
        files = destination.finish(keys)
        out = destination.out
        (out / MANIFEST_NAME).write_bytes(manifest_bytes)
        with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*table.schema.names, "file"])
            for record, key in zip(records, (snapshot_keys([r])[0] for r in records), strict=True):
                file_id = files[key]
                if record.get("store_keys"):  # a series row: the folder of its slices
                    file_id = file_id.rsplit("/", 1)[0]
                writer.writerow([("" if v is None else v) for v in record.values()] + [file_id])
        _write_description(out, info)
        destination.cleanup()  # last: until then a re-run resumes from the staged files
    _audit_export(
        settings,
        name,
        actor,
        {
            "content_hash": info.content_hash,
            "to": kind,
            "files": len(keys),
            "sent": sent,
            "bytes": written,
        },
    )
    retries = getattr(destination, "retries", 0)
    return DestinationResult(
        name,
        destination.describe(),
        kind,
        len(keys),
        sent,
        already,
        written,
        retries,
        info.content_hash,
    )
