"""Dataset snapshots: freeze a labelled, split set of de-identified instances from the catalog.

A snapshot is a parquet manifest under ``$MEDAI_HOME/snapshots/<name>/manifest.parquet``
plus one immutable :class:`~medai.catalog.models.Snapshot` row. The manifest has one row
per instance (a CT series has several), sorted by patient, study, series and instance
UID, with the columns of :data:`BASE_COLUMNS`, one ``Int8`` column per finding (1
present, 0 absent, ``<NA>`` not labelled) and ``split`` (``train``, ``val``, ``test``).

What goes in (:class:`SnapshotQuery`): instances of the chosen sites, modalities and
body part. By default only instances of studies with at least one usable label among the
chosen findings (every finding of the campaign unless narrowed). A label flagged as a
conflict (:attr:`StudyLabel.conflict`) is not usable: it is treated as missing, since a
steward has not decided which of the disagreeing values is right.

Splits are patient-level, so no patient is in two splits, and stratified: see
:func:`assign_splits`. The content hash (:func:`content_hash`) covers the manifest's
column names, logical types and values, not the parquet bytes, which differ between
library versions; the same catalog, query and seed always give the same hash.

Everything read here is already de-identified (store and catalog); the quarantine is never
read.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import io
import json
import logging
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# pyarrow ships no type information (pyproject's mypy overrides are not this module's).
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medai.audit import append_audit, canonical_json, lock_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance, Patient, Series, Snapshot, Study, StudyLabel
from medai.collection.campaign.definition import get_site, stored_campaign
from medai.config import Settings, get_settings
from medai.errors import (
    SnapshotError,
    SnapshotExists,
    SnapshotNotFound,
    SnapshotTampered,
)
from medai.store import ObjectStore, write_atomically

if TYPE_CHECKING:
    import pandas as pd

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

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
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

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_FINDING = re.compile(r"[a-z0-9][a-z0-9_]*")
# Path components of the exported tree: pseudonyms (P + base32) and 2.25.<int> UIDs.
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SnapshotQuery:
    """Which instances a snapshot takes from the catalog.

    Parameters
    ----------
    sites
        Campaign site ids; empty means every site.
    modalities
        Modalities (case ignored); empty means every modality.
    body_part
        One body part (case ignored), or None for any.
    findings
        The label columns; empty means every finding of the campaign.
    labelled_only
        Keep only instances of studies with at least one non-conflicting label among
        ``findings`` (the default); False keeps unlabelled studies too (all ``<NA>``).
    """

    sites: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    body_part: str | None = None
    findings: tuple[str, ...] = ()
    labelled_only: bool = True

    def normalized(self) -> SnapshotQuery:
        """Sorted, de-duplicated, case-normalized (the form recorded with the snapshot)."""
        return SnapshotQuery(
            sites=tuple(sorted(set(self.sites))),
            modalities=tuple(sorted({m.strip().upper() for m in self.modalities})),
            body_part=self.body_part.strip().upper() if self.body_part else None,
            findings=tuple(sorted({f.strip().lower() for f in self.findings})),
            labelled_only=self.labelled_only,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites),
            "modalities": list(self.modalities),
            "body_part": self.body_part,
            "findings": list(self.findings),
            "labelled_only": self.labelled_only,
        }


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot's catalog record; ``manifest`` is the absolute manifest path."""

    name: str
    created_at: dt.datetime
    actor: str
    query: dict[str, Any]
    seed: int
    fractions: dict[str, float]
    counts: dict[str, Any]
    content_hash: str
    manifest: Path

    @classmethod
    def from_row(cls, row: Snapshot, settings: Settings) -> SnapshotInfo:
        return cls(
            name=row.name,
            created_at=row.created_at,
            actor=row.actor,
            query=dict(row.query),
            seed=row.seed,
            fractions={k: float(v) for k, v in row.fractions.items()},
            counts=dict(row.counts),
            content_hash=row.content_hash,
            manifest=settings.resolved_home / row.manifest_path,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "actor": self.actor,
            "query": self.query,
            "seed": self.seed,
            "fractions": self.fractions,
            "counts": self.counts,
            "content_hash": self.content_hash,
            "manifest": str(self.manifest),
        }


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


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid snapshot name, else raise :class:`SnapshotError`.

    A name is 1-64 characters of lower-case letters, digits, ``-`` and ``_``, starting with
    a letter or digit: it is a directory name and is typed in commands and notebooks.
    """
    if not _NAME.fullmatch(name):
        raise SnapshotError(
            f"invalid snapshot name {name!r}: use 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. chest-v1)"
        )
    return name


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.7,0.15,0.15"`` into train/val/test fractions that sum to 1.

    Raises
    ------
    SnapshotError
        Unless there are three non-negative numbers summing to 1 with a positive train.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise SnapshotError(
            f"invalid split {text!r}: give three fractions train,val,test, e.g. 0.7,0.15,0.15"
        )
    return _check_fractions((values[0], values[1], values[2]))


def _check_fractions(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3 or any(not v >= 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise SnapshotError(
            f"invalid split {','.join(map(str, values))}: three non-negative fractions "
            "(train,val,test) must sum to 1"
        )
    if values[0] <= 0:
        raise SnapshotError("invalid split: the train fraction must be above 0")
    return (float(values[0]), float(values[1]), float(values[2]))


def assign_splits(
    patients: Mapping[str, tuple[str, tuple[str, ...]]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, str]:
    """Assign each patient to ``train``, ``val`` or ``test``, stratified by site and labels.

    Patients are grouped into strata by their key (site, sorted positive findings). The
    strata are visited in a seeded random order and each stratum's patients in a seeded
    random order; each patient goes to the split with the largest deficit, where the
    deficit of split *i* after *k* patients is ``fraction_i * (k + 1) - count_i``, summed
    over the patient's stratum and over all patients so far. The stratum term spreads
    every stratum with enough patients across the splits in proportion; the global term
    keeps the overall fractions right when there are many small strata. Ties go to the
    earlier split (train first).

    Parameters
    ----------
    patients
        ``{patient pseudonym: (site, positive findings)}``.
    fractions
        Train, val and test fractions (summing to 1).
    seed
        The shuffle's seed: the same input and seed always give the same assignment.

    Returns
    -------
    dict
        ``{patient pseudonym: split}``.
    """
    fractions = _check_fractions(fractions)
    strata: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for patient in sorted(patients):
        site, positives = patients[patient]
        strata[(site, tuple(sorted(positives)))].append(patient)
    rng = random.Random(seed)
    order = sorted(strata)
    rng.shuffle(order)
    total = [0, 0, 0]
    assigned = 0
    result: dict[str, str] = {}
    for key in order:
        members = strata[key]
        rng.shuffle(members)
        local = [0, 0, 0]
        for k, patient in enumerate(members):
            scores = [
                (fractions[i] * (k + 1) - local[i]) + (fractions[i] * (assigned + 1) - total[i])
                for i in range(3)
            ]
            best = max(range(3), key=lambda i: (scores[i], -i) if fractions[i] > 0 else (-1e9, 0))
            local[best] += 1
            total[best] += 1
            assigned += 1
            result[patient] = SPLITS[best]
    return result


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


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _campaign_findings(session: Session) -> list[str]:
    """Every finding the campaign knows: label mappings, targets, and labels present."""
    definition = stored_campaign(session)
    findings: set[str] = set()
    for site in definition.sites:
        if definition.labels is not None:
            findings.update(definition.labels.for_site(site.id).findings)
        findings.update(t.finding for t in site.targets if t.finding)
    findings.update(session.scalars(select(StudyLabel.finding).distinct()))
    return sorted(findings)


def _resolve_query(session: Session, query: SnapshotQuery) -> SnapshotQuery:
    query = query.normalized()
    for site in query.sites:
        get_site(session, site)  # UnknownSite, naming the campaign's sites
    known = _campaign_findings(session)
    if not query.findings:
        if not known:
            raise SnapshotError(
                "the campaign has no findings (no [labels] mapping, no finding targets, no "
                "labels): nothing to label the snapshot with"
            )
        return SnapshotQuery(
            query.sites, query.modalities, query.body_part, tuple(known), query.labelled_only
        )
    unknown = [f for f in query.findings if f not in known]
    if unknown:
        raise SnapshotError(
            f"unknown finding(s) {', '.join(unknown)}; the campaign's findings are: "
            + (", ".join(known) or "none")
        )
    return query


def _collect(session: Session, query: SnapshotQuery) -> list[dict[str, Any]]:
    """The instances matching ``query``, with their study's usable labels, sorted."""
    statement = (
        select(
            Patient.pseudonym,
            Study.id,
            Study.study_uid,
            Series.series_uid,
            Instance.sop_instance_uid,
            Study.site_id,
            Instance.modality,
            Instance.body_part,
            Instance.view_position,
            Instance.manufacturer,
            Instance.rows,
            Instance.columns,
            Instance.store_key,
        )
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .join(Patient, Study.patient_id == Patient.id)
    )
    if query.sites:
        statement = statement.where(Study.site_id.in_(query.sites))
    if query.modalities:
        statement = statement.where(Instance.modality.in_(query.modalities))
    if query.body_part:
        statement = statement.where(Instance.body_part == query.body_part)
    labels: dict[int, dict[str, int]] = defaultdict(dict)
    label_query = select(StudyLabel.study_id, StudyLabel.finding, StudyLabel.value).where(
        StudyLabel.conflict.is_(False), StudyLabel.finding.in_(query.findings)
    )
    if query.sites:
        label_query = label_query.where(StudyLabel.site_id.in_(query.sites))
    for study_id, finding, value in session.execute(label_query):
        labels[study_id][finding] = int(value)
    rows = []
    for record in session.execute(statement):
        study_labels = labels.get(record[1], {})
        if query.labelled_only and not study_labels:
            continue
        values: list[Any] = [record[0], *record[2:]]
        row: dict[str, Any] = dict(zip(BASE_COLUMNS, values, strict=True))
        for finding in query.findings:
            row[finding] = study_labels.get(finding)
        rows.append(row)
    # Sorted here, not in SQL: collations differ between SQLite and PostgreSQL.
    rows.sort(key=lambda r: (r["patient"], r["study_uid"], r["series_uid"], r["sop_instance_uid"]))
    return rows


def _counts(rows: Sequence[Mapping[str, Any]], findings: Iterable[str]) -> dict[str, Any]:
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
    return counts


def _table(rows: Sequence[Mapping[str, Any]], findings: Sequence[str]) -> pa.Table:
    clash = sorted(set(findings) & {*BASE_COLUMNS, "split"})
    if clash:
        raise SnapshotError(f"finding name(s) {', '.join(clash)} clash with manifest columns")
    schema = pa.schema(
        [*_BASE_SCHEMA, *((finding, pa.int8()) for finding in findings), ("split", pa.string())]
    )
    return pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)


def _manifest_relpath(name: str) -> str:
    return f"{SNAPSHOT_DIR}/{name}/{MANIFEST_NAME}"


def _session(settings: Settings) -> Any:
    engine = create_engine_for(settings.resolved_database_url)
    return engine, session_factory(engine)


def create_snapshot(
    name: str,
    query: SnapshotQuery | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    settings: Settings | None = None,
    actor: str | None = None,
) -> SnapshotInfo:
    """Freeze the instances matching ``query`` into the snapshot ``name``.

    The manifest, the catalog row and a ``snapshot.create`` audit record are written in
    one catalog transaction (the manifest file just before it commits).

    Parameters
    ----------
    name
        A new snapshot name (see :func:`validate_name`).
    query
        What to take (:class:`SnapshotQuery`); everything labelled by default.
    seed
        Seed of the patient split shuffle.
    fractions
        Train, val and test fractions of patients.
    settings
        Where the catalog and home are; :func:`medai.config.get_settings` by default.
    actor
        Who is recorded; the login name by default.

    Returns
    -------
    SnapshotInfo

    Raises
    ------
    SnapshotExists
        If ``name`` is taken (snapshots are immutable).
    SnapshotError
        On a bad name, split, finding, or when nothing matches.
    UnknownSite
        If a site is not one of the campaign's.
    """
    validate_name(name)
    split_fractions = _check_fractions(fractions)
    settings = settings or get_settings()
    actor = actor or _actor()
    relpath = _manifest_relpath(name)
    home = settings.resolved_home
    engine, sessions = _session(settings)
    try:
        with sessions.begin() as session:
            lock_audit_chain(session)  # before any write: see lock_audit_chain
            if session.scalar(select(Snapshot.id).where(Snapshot.name == name)) is not None:
                raise SnapshotExists(_exists_message(name))
            resolved = _resolve_query(session, query or SnapshotQuery())
            rows = _collect(session, resolved)
            if not rows:
                raise SnapshotError(
                    f"no instances match the query {json.dumps(resolved.to_dict())}"
                    + (" (only labelled studies are taken)" if resolved.labelled_only else "")
                )
            splits = assign_splits(_strata(rows, resolved.findings), split_fractions, seed)
            for row in rows:
                row["split"] = splits[row["patient"]]
            table = _table(rows, resolved.findings)
            digest = content_hash(table)
            counts = _counts(rows, resolved.findings)
            snapshot = Snapshot(
                name=name,
                actor=actor,
                query=resolved.to_dict(),
                seed=seed,
                fractions=dict(zip(SPLITS, split_fractions, strict=True)),
                counts=counts,
                content_hash=digest,
                manifest_path=relpath,
            )
            session.add(snapshot)
            session.flush()  # a concurrent creator of the same name waits or fails here
            append_audit(
                session,
                actor=actor,
                action="snapshot.create",
                subject=name,
                details={"content_hash": digest, "seed": seed, "counts": counts["total"]},
            )
            _write_manifest(table, home / relpath, home / SNAPSHOT_DIR / ".tmp")
            info = SnapshotInfo.from_row(snapshot, settings)
    except IntegrityError:
        raise SnapshotExists(_exists_message(name)) from None
    finally:
        engine.dispose()
    logger.info(
        "snapshot %s created: %d instances, %d patients, hash %s",
        name,
        counts["total"]["instances"],
        counts["total"]["patients"],
        digest,
    )
    return info


def _exists_message(name: str) -> str:
    return (
        f"a snapshot named {name!r} already exists and snapshots are immutable: choose another name"
    )


def _strata(
    rows: Sequence[Mapping[str, Any]], findings: Sequence[str]
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{patient: (site, positive findings)}``; a patient seen at several sites takes the
    first site id in sort order."""
    sites: dict[str, set[str]] = defaultdict(set)
    positives: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sites[row["patient"]].add(row["site"])
        positives[row["patient"]].update(f for f in findings if row[f] == 1)
    return {p: (min(sites[p]), tuple(sorted(positives[p]))) for p in sites}


def _write_manifest(table: pa.Table, final: Path, tmp_dir: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    # Complete or absent: a crash before the catalog commit leaves at most a stale file,
    # which the next create of that name overwrites.
    write_atomically(buffer.getvalue(), final, tmp_dir, mode=0o444)


def list_snapshots(settings: Settings | None = None) -> list[SnapshotInfo]:
    """Every snapshot, oldest first."""
    settings = settings or get_settings()
    engine, sessions = _session(settings)
    try:
        with sessions() as session:
            rows = session.scalars(select(Snapshot).order_by(Snapshot.created_at, Snapshot.id))
            return [SnapshotInfo.from_row(row, settings) for row in rows]
    finally:
        engine.dispose()


def get_snapshot(name: str, settings: Settings | None = None) -> SnapshotInfo:
    """The snapshot ``name``; raises :class:`SnapshotNotFound` if there is none."""
    settings = settings or get_settings()
    engine, sessions = _session(settings)
    try:
        with sessions() as session:
            row = session.scalar(select(Snapshot).where(Snapshot.name == name))
            if row is None:
                known = list(session.scalars(select(Snapshot.name).order_by(Snapshot.name)))
                raise SnapshotNotFound(
                    f"no snapshot named {name!r}; "
                    + (f"snapshots: {', '.join(known)}" if known else "there are no snapshots")
                )
            return SnapshotInfo.from_row(row, settings)
    finally:
        engine.dispose()


def _read_verified(info: SnapshotInfo) -> tuple[bytes, pa.Table]:
    """The manifest's bytes and table, once its content hash matched the catalog's."""
    try:
        data = info.manifest.read_bytes()
        table = pq.read_table(pa.BufferReader(data))
    except FileNotFoundError:
        raise SnapshotTampered(
            f"the manifest of snapshot {info.name!r} is missing ({info.manifest})"
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotTampered(
            f"the manifest of snapshot {info.name!r} cannot be read ({info.manifest}: {exc})"
        ) from None
    try:
        digest = content_hash(table)
    except SnapshotError:
        digest = "unhashable"
    if digest != info.content_hash:
        raise SnapshotTampered(
            f"the manifest of snapshot {info.name!r} was altered: its content hash is "
            f"{digest}, the catalog recorded {info.content_hash} ({info.manifest})"
        )
    return data, table


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    import pandas as pd

    mapping = {
        pa.string(): pd.StringDtype(),
        pa.large_string(): pd.StringDtype(),
        pa.int8(): pd.Int8Dtype(),
        pa.int32(): pd.Int32Dtype(),
    }
    return table.to_pandas(types_mapper=mapping.get)


def load_snapshot(name: str, settings: Settings | None = None) -> pd.DataFrame:
    """Load snapshot ``name``'s manifest as a DataFrame, after checking its content hash.

    Strings are ``string`` dtype, ``rows``/``columns`` ``Int32`` and each finding ``Int8``
    (``<NA>`` where not labelled). ``df.attrs["snapshot"]`` holds the catalog record
    (:meth:`SnapshotInfo.to_dict`).

    Raises
    ------
    SnapshotNotFound
        If there is no such snapshot.
    SnapshotTampered
        If the manifest is missing, unreadable or not the content recorded at creation.
    """
    info = get_snapshot(name, settings)
    frame = _to_pandas(_read_verified(info)[1])
    frame.attrs["snapshot"] = info.to_dict()
    return frame


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
    manifest_bytes, table = _read_verified(info)
    records = table.to_pylist()
    store = ObjectStore(settings.resolved_store_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    files: list[str] = []
    for done, record in enumerate(records, start=1):
        parts = [record[c] for c in ("patient", "study_uid", "series_uid", "sop_instance_uid")]
        for part in parts:
            if not isinstance(part, str) or not _SAFE_COMPONENT.fullmatch(part):
                raise SnapshotError(f"unsafe identifier {part!r} in snapshot {name!r}")
        relative = "/".join(parts[:3]) + f"/{parts[3]}.dcm"
        data = store.read(record["store_key"], verify=True)  # StoreCorrupt on mismatch
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written += len(data)
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
    engine, sessions = _session(settings)
    try:
        with sessions.begin() as session:
            lock_audit_chain(session)
            append_audit(
                session,
                actor=actor or _actor(),
                action="snapshot.export",
                subject=name,
                details={"content_hash": info.content_hash, "files": len(files), "bytes": written},
            )
    finally:
        engine.dispose()
    return ExportResult(name, out, len(files), written, info.content_hash)
