"""Dataset snapshots: frozen, labelled, split manifests between collection and training.

A snapshot is a parquet manifest under ``$MEDAI_HOME/snapshots/<name>/manifest.parquet``
plus one immutable :class:`~medai.catalog.models.Snapshot` row. The manifest has one row
per instance (a CT series has several), sorted by patient, study, series and instance
UID, with the columns of :data:`BASE_COLUMNS`, one ``Int8`` column per finding (1
present, 0 absent, ``<NA>`` not labelled) and ``split`` (``train``, ``val``, ``test``).
A series snapshot (``SnapshotQuery(level="series")``) has one row per series assembled
into a volume instead, with ``store_keys``, ``slices`` and ``spacing_mm`` after the base
columns; series that are not one volume are listed with their reason
(:mod:`medai.snapshots.series`).

What goes in (:class:`SnapshotQuery`): instances of the chosen sites, modalities and
body part. By default only instances of studies with at least one usable label among the
chosen findings (every finding of the campaign unless narrowed). A label flagged as a
conflict (:attr:`StudyLabel.conflict`) is not usable: it is treated as missing, since a
steward has not decided which of the disagreeing values is right.

Splits are patient-level, so no patient is in two splits, and keyed per patient, so they
stay put as data grows and snapshots of one seed and test fraction share a locked test set:
see :func:`assign_splits` and :mod:`medai.snapshots.locked_test`. The content hash
(:func:`content_hash`) covers the manifest's column names, logical types and values, not
the parquet bytes, which differ between library versions; the same catalog, query and
seed always give the same hash.

Everything read here is already de-identified (store and catalog); the quarantine is never
read.

Modules: ``query`` (what goes in), ``splits`` (patient-level splits), ``manifest`` (the
file and its content hash), ``records`` (create, list, get, load), ``series`` (series
rows), ``export`` (a DICOM tree for a research partner). Names are imported on first
use, so that importing ``medai.snapshots.cli`` (for ``medai --help``) loads neither
pyarrow nor the catalog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medai.lazy import lazy_exports

if TYPE_CHECKING:
    from medai.snapshots.export import ExportResult, export_snapshot
    from medai.snapshots.manifest import BASE_COLUMNS, content_hash
    from medai.snapshots.query import SnapshotQuery, validate_name
    from medai.snapshots.records import (
        SnapshotInfo,
        create_snapshot,
        get_snapshot,
        list_snapshots,
        load_snapshot,
    )
    from medai.snapshots.splits import DEFAULT_FRACTIONS, SPLITS, assign_splits, parse_fractions

__all__ = [
    "BASE_COLUMNS",
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "ExportResult",
    "SnapshotInfo",
    "SnapshotQuery",
    "assign_splits",
    "content_hash",
    "create_snapshot",
    "export_snapshot",
    "get_snapshot",
    "list_snapshots",
    "load_snapshot",
    "parse_fractions",
    "validate_name",
]

_MODULES = {
    "ExportResult": "export",
    "export_snapshot": "export",
    "BASE_COLUMNS": "manifest",
    "content_hash": "manifest",
    "SnapshotQuery": "query",
    "validate_name": "query",
    "SnapshotInfo": "records",
    "create_snapshot": "records",
    "get_snapshot": "records",
    "list_snapshots": "records",
    "load_snapshot": "records",
    "DEFAULT_FRACTIONS": "splits",
    "SPLITS": "splits",
    "assign_splits": "splits",
    "parse_fractions": "splits",
}


__getattr__ = lazy_exports(__name__, _MODULES)
