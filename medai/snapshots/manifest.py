"""The manifest file: its columns, its content hash, and writing and reading it back verified."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# pyarrow ships no type information (pyproject's mypy overrides are not this module's).
import pyarrow as pa
import pyarrow.parquet as pq

from medai.audit import canonical_json
from medai.errors import SnapshotError, SnapshotTampered
from medai.snapshots.splits import SPLITS
from medai.store import write_atomically

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BASE_COLUMNS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SERIES_COLUMNS",
    "SNAPSHOT_DIR",
    "content_hash",
    "manifest_counts",
    "manifest_relpath",
    "manifest_table",
    "read_verified",
    "to_pandas",
    "write_manifest",
]

# Bumped if the canonical content definition ever changes (it is part of the hash).
MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.parquet"
SNAPSHOT_DIR = "snapshots"

# (column, arrow type) of the manifest before the finding columns and ``split``.
_BASE_SCHEMA: tuple[tuple[str, pa.DataType], ...] = (
    ("patient", pa.string()),
    ("study_uid", pa.string()),
    ("series_uid", pa.string()),
    ("sop_instance_uid", pa.string()),
    ("site", pa.string()),
    ("modality", pa.string()),
    ("body_part", pa.string()),
    ("view_position", pa.string()),
    ("manufacturer", pa.string()),
    ("rows", pa.int32()),
    ("columns", pa.int32()),
    ("store_key", pa.string()),
)
BASE_COLUMNS = tuple(name for name, _ in _BASE_SCHEMA)
# Series-level manifests only, after the base columns: every store key of the series in
# slice order ("\n"-joined), the number of slices, and the spacing "z,y,x" in mm.
_SERIES_SCHEMA: tuple[tuple[str, pa.DataType], ...] = (
    ("store_keys", pa.string()),
    ("slices", pa.int32()),
    ("spacing_mm", pa.string()),
)
SERIES_COLUMNS = tuple(name for name, _ in _SERIES_SCHEMA)


def _logical_type(data_type: pa.DataType) -> str:
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    if pa.types.is_integer(data_type):
        return "int"
    raise SnapshotError(f"unexpected manifest column type {data_type}")


def content_hash(table: pa.Table) -> str:
    """The sha256 of a manifest's canonical content.

    The hashed text is one canonical JSON line (sorted keys, no spaces) holding the
    format version and the ``[name, logical type]`` of every column (``string`` or
    ``int``), then one canonical JSON array per row with the row's values in column
    order (``null`` for a missing value), each line ending with ``\\n``. It depends only
    on the manifest's names, types and values, not on how parquet encoded them.

    Parameters
    ----------
    table
        The manifest as an Arrow table.

    Returns
    -------
    str
        sha256 hex digest.
    """
    digest = hashlib.sha256()
    header = {
        "format": MANIFEST_FORMAT,
        "columns": [[f.name, _logical_type(f.type)] for f in table.schema],
    }
    digest.update(canonical_json(header).encode("utf-8") + b"\n")
    for batch in table.to_batches(max_chunksize=10_000):
        columns = [column.to_pylist() for column in batch.columns]
        for row in zip(*columns, strict=True):
            digest.update(canonical_json(list(row)).encode("utf-8") + b"\n")
    return digest.hexdigest()


def manifest_counts(
    rows: Sequence[Mapping[str, Any]], findings: Iterable[str], level: str = "instance"
) -> dict[str, Any]:
    """Patients, studies, instances and positive studies per finding, per split and in total.

    At series level each row is a series: ``series`` counts rows, ``instances`` their slices.
    """
    findings = list(findings)
    counts: dict[str, Any] = {}
    for split in (*SPLITS, "total"):
        chosen = [r for r in rows if split == "total" or r["split"] == split]
        studies = {r["study_uid"]: r for r in chosen}
        counts[split] = {
            "patients": len({r["patient"] for r in chosen}),
            "studies": len(studies),
            "instances": len(chosen),
            "positives": {f: sum(1 for r in studies.values() if r[f] == 1) for f in findings},
        }
        if level == "series":
            counts[split]["series"] = len(chosen)
            counts[split]["instances"] = sum(int(r["slices"]) for r in chosen)
    return counts


def manifest_table(
    rows: Sequence[Mapping[str, Any]], findings: Sequence[str], level: str = "instance"
) -> pa.Table:
    """The manifest as an Arrow table: the base columns (then, at series level, the
    :data:`SERIES_COLUMNS`), one ``int8`` per finding, ``split``."""
    clash = sorted(set(findings) & {*BASE_COLUMNS, *SERIES_COLUMNS, "split"})
    if clash:
        raise SnapshotError(f"finding name(s) {', '.join(clash)} clash with manifest columns")
    series = _SERIES_SCHEMA if level == "series" else ()
    schema = pa.schema(
        [
            *_BASE_SCHEMA,
            *series,
            *((finding, pa.int8()) for finding in findings),
            ("split", pa.string()),
        ]
    )
    return pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)


def manifest_relpath(name: str) -> str:
    """Where snapshot ``name``'s manifest lies, relative to the medai home."""
    return f"{SNAPSHOT_DIR}/{name}/{MANIFEST_NAME}"


def write_manifest(table: pa.Table, final: Path, tmp_dir: Path) -> None:
    """Write the manifest as parquet, read-only, complete or not at all."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    # Complete or absent: a crash before the catalog commit leaves at most a stale file,
    # which the next create of that name overwrites.
    write_atomically(buffer.getvalue(), final, tmp_dir, mode=0o444)


def read_verified(name: str, path: Path, recorded_hash: str) -> tuple[bytes, pa.Table]:
    """Snapshot ``name``'s manifest bytes and table, once its content hash matched the one
    the catalog recorded; raises :class:`SnapshotTampered` otherwise."""
    try:
        data = path.read_bytes()
        table = pq.read_table(pa.BufferReader(data))
    except FileNotFoundError:
        raise SnapshotTampered(f"the manifest of snapshot {name!r} is missing ({path})") from None
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotTampered(
            f"the manifest of snapshot {name!r} cannot be read ({path}: {exc})"
        ) from None
    try:
        digest = content_hash(table)
    except SnapshotError:
        digest = "unhashable"
    if digest != recorded_hash:
        raise SnapshotTampered(
            f"the manifest of snapshot {name!r} was altered: its content hash is "
            f"{digest}, the catalog recorded {recorded_hash} ({path})"
        )
    return data, table


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """The manifest as a DataFrame with nullable dtypes (``string``, ``Int32``, ``Int8``)."""
    import pandas as pd

    mapping = {
        pa.string(): pd.StringDtype(),
        pa.large_string(): pd.StringDtype(),
        pa.int8(): pd.Int8Dtype(),
        pa.int32(): pd.Int32Dtype(),
    }
    return table.to_pandas(types_mapper=mapping.get)
