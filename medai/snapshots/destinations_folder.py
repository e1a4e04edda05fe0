"""Export destination: a folder written as DICOM media (PS3.10 File-set with a DICOMDIR).

Instances are first staged in ``DEST/.medai-staging/`` (one file per store key, re-hashed
after writing: that re-hash is the confirmation), so an export cut off part-way resumes with
what is staged and verified. :meth:`FolderDestination.finish` then builds the File-set with
pydicom's :class:`~pydicom.fileset.FileSet` (``PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx`` and
``DICOMDIR``, readable by dcmtk's ``dcmdump``/``dcmftest`` and by viewers), moves it into
place, reads the DICOMDIR back and re-hashes every file it names: the export is verified
when they are exactly the snapshot's instances, byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import (  # the default record makers, as FileSet.add uses them
    DIRECTORY_RECORDERS,
    FileSet,
    RecordNode,
    _four_level_record_type,
)

from medai.errors import SnapshotError
from medai.snapshots.destinations import ExportItem, Sent

__all__ = ["DICOMDIR", "FolderDestination"]

DICOMDIR = "DICOMDIR"
_STAGING = ".medai-staging"
_BUILD = ".medai-fileset"
# What an export leaves beside the File-set (see medai.snapshots.export).
_OURS = {_STAGING, _BUILD, DICOMDIR, "manifest.parquet", "manifest.csv", "snapshot.json"}


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _leaf(header: Dataset) -> RecordNode:
    """The PATIENT/STUDY/SERIES/leaf records of one instance, as pydicom would make them.

    De-identification empties Study ID, which a STUDY record needs (PS3.3 F.5): the record
    gets one derived from the (pseudonymized) Study Instance UID; the file keeps its bytes.
    Series and Instance Number, when absent, become 0 in the records only.
    """
    if not header.get("StudyID"):
        digest = hashlib.sha256(str(header.StudyInstanceUID).encode()).hexdigest()
        header.StudyID = "S" + digest[:15].upper()
    for keyword in ("SeriesNumber", "InstanceNumber"):
        if header.get(keyword) in (None, ""):
            setattr(header, keyword, "0")
    node: RecordNode | None = None
    leaf_type = _four_level_record_type(header)
    for record_type in ("PATIENT", "STUDY", "SERIES", leaf_type):
        record = DIRECTORY_RECORDERS[record_type](header)
        record.DirectoryRecordType = record_type
        if record_type == leaf_type:  # the leaf's key; FileSet.add_custom sets the rest
            record.ReferencedSOPInstanceUIDInFile = header.SOPInstanceUID
        if "SpecificCharacterSet" in header:
            record.SpecificCharacterSet = header.SpecificCharacterSet
        child = RecordNode(record)
        if node is not None:
            child.parent = node
        node = child
    assert node is not None
    return node


class FolderDestination:
    """A new or empty folder (or one this export started) made into a DICOM File-set."""

    kind = "folder"

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out).expanduser().absolute()
        if self.out.exists() and not self.out.is_dir():
            raise SnapshotError(f"{self.out} is a file: export into a new or empty directory")
        if self.out.exists():
            others = [p.name for p in self.out.iterdir() if p.name not in _OURS]
            if others and not (self.out / _STAGING).is_dir():
                raise SnapshotError(
                    f"{self.out} is not an empty directory: export into a new or empty one"
                )
        self.staging = self.out / _STAGING
        self.files: dict[str, str] = {}  # store key -> File ID, once finished

    def describe(self) -> str:
        return str(self.out)

    def staged(self) -> set[str]:
        """Store keys already staged whose bytes still match (an earlier, cut-off run)."""
        if not self.staging.is_dir():
            return set()
        good = set()
        for path in self.staging.glob("*.dcm"):
            if _sha256(path) == path.stem:
                good.add(path.stem)
            else:  # a file cut off mid-write: written again
                path.unlink()
        return good

    def send(self, items: list[ExportItem]) -> list[Sent]:
        self.staging.mkdir(parents=True, exist_ok=True)
        sent = []
        for item in items:
            target = self.staging / f"{item.key}.dcm"
            tmp = target.with_suffix(".part")
            tmp.write_bytes(item.data)
            tmp.replace(target)
            ok = _sha256(target) == item.key
            sent.append(Sent(item.key, ok, "" if ok else "the written file does not re-hash"))
        return sent

    def finish(self, keys: list[str]) -> dict[str, str]:
        """Build the File-set from the staged files, move it into place, verify it.

        Returns the File ID (``PT.../IM...``) of each store key.

        Raises
        ------
        SnapshotError
            When pydicom cannot index an instance, or the File-set read back is not exactly
            the snapshot's instances.
        """
        build = self.out / _BUILD
        shutil.rmtree(build, ignore_errors=True)  # a build cut off earlier
        for name in [
            p for p in self.out.iterdir() if p.name.startswith("PT") or p.name == DICOMDIR
        ]:
            # A File-set of an earlier, cut-off finish: rebuilt whole.
            shutil.rmtree(name) if name.is_dir() else name.unlink()
        fileset = FileSet()
        fileset.ID = "MEDAI"
        for key in dict.fromkeys(keys):
            path = self.staging / f"{key}.dcm"
            try:
                fileset.add_custom(str(path), _leaf(dcmread(path, stop_before_pixels=True)))
            except (ValueError, KeyError, AttributeError, InvalidDicomError) as exc:
                raise SnapshotError(
                    f"an instance cannot be indexed in a DICOMDIR ({exc}): export to a "
                    "server or node instead"
                ) from None
        fileset.write(str(build))
        for entry in build.iterdir():
            entry.replace(self.out / entry.name)
        build.rmdir()
        self.files = self._verify(set(keys))
        return self.files

    def cleanup(self) -> None:
        """Remove the staged copies, once the File-set and its manifests are written."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def _verify(self, keys: set[str]) -> dict[str, str]:
        """Read the DICOMDIR back; every file it names re-hashed against the store keys."""
        found: dict[str, str] = {}
        for instance in FileSet(dcmread(self.out / DICOMDIR)):
            path = Path(instance.path)
            found[_sha256(path)] = path.relative_to(self.out).as_posix()
        missing, extra = keys - found.keys(), found.keys() - keys
        if missing or extra:
            raise SnapshotError(
                f"the DICOMDIR in {self.out} does not match the snapshot ({len(missing)} "
                f"instances missing, {len(extra)} unexpected): export again into a new folder"
            )
        return {key: found[key] for key in keys}

    def close(self) -> None:
        """Nothing to release: files are closed as written."""
