"""SQLAlchemy 2 models of the catalog: one schema for SQLite and PostgreSQL.

Everything here is de-identified: UIDs are the pseudonymized ``2.25.<int>`` ones,
patients are known only by their pseudonym, and no free text from the source
files is kept. The only place raw files live is the quarantine directory; its
rows here hold a reason, never identifying values.

One module although it is over 400 lines: the tables reference one another and Alembic's
autogenerate compares one metadata, so the whole schema reads best on one page; each
class is a plain table with no logic to split off.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ApiKey",
    "AuditRecord",
    "Base",
    "Campaign",
    "ImportRun",
    "IngestEvent",
    "Instance",
    "LabelCount",
    "LabelImport",
    "LabelRow",
    "ProgressCount",
    "Patient",
    "QuarantineEntry",
    "Series",
    "Site",
    "Snapshot",
    "Study",
    "StudyLabel",
    "UTCDateTime",
    "utcnow",
]

# Stable constraint names so Alembic migrations are the same on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is timezone-aware UTC in Python on both databases.

    PostgreSQL's ``timestamptz`` returns aware values, but SQLite stores text
    without an offset and returns naive ones, so comparing a loaded value with
    ``utcnow()`` would fail on SQLite only. Values are converted to UTC when
    written (a naive value is taken as UTC) and marked UTC when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


UID = String(64)
Timestamp = UTCDateTime()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Campaign(Base):
    """The campaign this catalog serves (one row; the TOML definition is kept as JSON)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    start_date: Mapped[dt.date] = mapped_column(Date)
    length_days: Mapped[int] = mapped_column(Integer, default=90)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    # medai.keyfile.key_fingerprint of the campaign key: every pseudonymizing command checks
    # its key against it. NULL only in catalogs set up before 0005, until the first check.
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)


class Site(Base):
    """A hospital site sending data; ``id`` is the short campaign id, e.g. ``site-a``."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    ae_titles: Mapped[list[Any]] = mapped_column(JSON, default=list)
    targets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    # Who assigns the PatientIDs of files that carry no IssuerOfPatientID (normalized: upper
    # case); NULL means the site id. Sites declaring the same issuer share one ID domain,
    # so the same ID there is one patient.
    issuer: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    first_seen_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    # How the pseudonym was derived: "v2" (issuer and PatientID) or "v1" (the PatientID
    # alone: patients catalogued before migration 0006, which their sites keep sending to).
    scheme: Mapped[str] = mapped_column(String(8), default="v2", server_default="v2")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    # The date after the per-patient shift, never the real one.
    study_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    # What the study counts as towards the campaign's targets: the modality and body part
    # of its first stored instance (a study is counted once, under one kind).
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Keyed hash of the site's accession number (the number itself is removed by the
    # Annex E profile): how label-sheet rows keyed by accession number find the study.
    accession_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Keyed hash of the site's own PatientID (Pseudonymizer.site_patient_key): the patient
    # check of label sheets, which know that ID but not the issuer. NULL before 0006.
    patient_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_received_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    # When the latest new instance of the study was catalogued (quiet-period clock).
    last_received_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    # Set once no new instance arrived for the quiet period (like Orthanc's StableAge);
    # cleared again if a late instance arrives, so the study completes anew.
    completed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True, index=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One de-identified SOP instance and where its bytes are in the store."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_site_received", "site_id", "received_at"),
        Index("ix_instances_modality_body_part", "modality", "body_part"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    view_position: Mapped[str | None] = mapped_column(String(16), nullable=True)
    manufacturer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    store_key: Mapped[str] = mapped_column(String(64), index=True)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    # Keyed hash of the decoded pixels (medai.collection.pixel_hash): the same image sent
    # again under other UIDs or another MRN has the same one. NULL when there is none,
    # and pixel_hash_status says why ("no-pixels", "undecodable"; NULL: catalogued before 0006).
    pixel_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    pixel_hash_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The first instance catalogued with the same pixels, when this one is a re-send of it.
    resend_of_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id"), nullable=True
    )

    series: Mapped[Series] = relationship(back_populates="instances")


class QuarantineEntry(Base):
    """A file that could not be accepted; its raw bytes are in the quarantine directory.

    ``raw_sha256`` is unique so offering the same bad file again never makes a
    second entry (the re-offer is still counted as an ingest event).
    """

    __tablename__ = "quarantine_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    raw_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    source: Mapped[str] = mapped_column(String(32))
    reason_code: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    # Path relative to the quarantine root; the file itself may hold PHI.
    relative_path: Mapped[str] = mapped_column(String(255))
    byte_size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    # When the raw bytes were deleted under the retention setting; the row stays for accounting.
    released_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)


class ImportRun(Base):
    """One run of a receiver over a batch (a folder import, a pull); for accounting."""

    __tablename__ = "import_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    source: Mapped[str] = mapped_column(String(32))
    # How many inputs the run found before it started offering them.
    inputs_found: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    # Free-form, de-identified state a receiver needs to resume (e.g. a pull checkpoint).
    checkpoint: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class IngestEvent(Base):
    """One offered input and its outcome: ``stored``, ``duplicate`` or ``quarantined``."""

    __tablename__ = "ingest_events"
    __table_args__ = (Index("ix_ingest_events_site_at", "site_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("import_runs.id"), index=True, nullable=True
    )
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    source: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    quarantine_id: Mapped[int | None] = mapped_column(
        ForeignKey("quarantine_entries.id"), nullable=True
    )
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class AuditRecord(Base):
    """An append-only, hash-chained audit record.

    ``record_hash`` = sha256 over the previous record's hash and this record's
    canonical JSON, so editing or deleting any record breaks every hash after it.
    """

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    record_hash: Mapped[str] = mapped_column(String(64))


class ApiKey(Base):
    """An API key of the web service. Only the key's sha256 is stored, never the key.

    Keys are 256-bit random tokens, so a plain (unsalted) hash is enough: there is
    nothing to brute-force, and a lookup by hash stays one indexed query.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first characters, shown in listings so an operator can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    # The site an ``edge`` key speaks for (its gateway may send that site's instances only);
    # NULL for every other role.
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"), nullable=True)


class ProgressCount(Base):
    """Studies and instances newly catalogued per site, day, modality and body part.

    Kept by the ingest pipeline in the same transaction as the rows it counts, so
    campaign progress is a small query over a few thousand rows, not a scan of every
    instance, and stays exact under concurrent ingest. ``day`` is the UTC day of
    receipt; an unknown modality or body part is stored as ``""`` (so the unique key
    holds on every database).
    """

    __tablename__ = "progress_counts"
    __table_args__ = (UniqueConstraint("site_id", "day", "modality", "body_part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    day: Mapped[dt.date] = mapped_column(Date)
    modality: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str] = mapped_column(String(64))
    studies: Mapped[int] = mapped_column(BigInteger, default=0)
    instances: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class LabelImport(Base):
    """One label sheet imported for a site (identified by its hash, not its name)."""

    __tablename__ = "label_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    sheet_sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(128))
    imported_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class LabelRow(Base):
    """One row of a label sheet, pseudonymized, kept until (and after) it finds its study.

    ``ref`` is the pseudonymized study UID (``ref_kind = "study_uid"``) or the keyed
    hash of the accession number (``"accession"``), computed exactly as the ingest
    pipeline computes them for the images. ``status``: ``unmatched`` (no such study
    catalogued yet; re-matched when the images arrive), ``matched``, ``conflict``
    (disagrees with a label the study already has; flagged, not applied) or
    ``duplicate`` (repeats a label the study already has).
    """

    __tablename__ = "label_rows"
    __table_args__ = (Index("ix_label_rows_ref", "site_id", "ref_kind", "ref"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("label_imports.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    row_number: Mapped[int] = mapped_column(Integer)
    ref_kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(64))
    findings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16), index=True)


class StudyLabel(Base):
    """The label of one finding for one study: 1 present, 0 absent."""

    __tablename__ = "study_labels"
    __table_args__ = (
        UniqueConstraint("study_id", "finding"),
        Index("ix_study_labels_site_finding", "site_id", "finding", "value"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    finding: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)
    label_row_id: Mapped[int] = mapped_column(ForeignKey("label_rows.id"))
    # Set when a later sheet row disagreed: the first value is kept until a steward decides.
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class LabelCount(Base):
    """Labelled and positive studies per site, receipt day, study kind and finding.

    Kept by label import and re-match in the transaction that writes the labels, so the
    dashboard's finding targets and label coverage never scan the label rows. The row
    with ``finding = ""`` counts studies with at least one label. ``day``, ``modality``
    and ``body_part`` are the study's (its first receipt, its kind; ``""`` if unknown).
    """

    __tablename__ = "label_counts"
    __table_args__ = (UniqueConstraint("site_id", "day", "modality", "body_part", "finding"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    day: Mapped[dt.date] = mapped_column(Date)
    modality: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(64))
    labelled: Mapped[int] = mapped_column(BigInteger, default=0)
    positives: Mapped[int] = mapped_column(BigInteger, default=0)


class Snapshot(Base):
    """A frozen dataset: a manifest of de-identified instances with labels and splits.

    Immutable once written. ``content_hash`` is the sha256 of the manifest's canonical
    content (see :mod:`medai.snapshots.manifest`), not of the parquet bytes, so it does
    not depend on the parquet library's version. ``manifest_path`` is relative to the
    medai home; ``query`` holds the resolved filters, ``counts`` the patients, studies and
    instances per split, ``fractions`` the split fractions asked for.
    """

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    query: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer)
    fractions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    manifest_path: Mapped[str] = mapped_column(String(255))
    # The locked test set (medai.snapshots.locked_test): its id, its patients' hash, and what
    # it shares with the latest earlier snapshot of that set; NULL before migration 0007.
    test_set: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)


class SiteHeartbeat(Base):
    """The latest heartbeat of a site's edge gateway (one row per site, replaced each time).

    ``receipts`` is the edge's own account, per receipt day (``YYYY-MM-DD``), of what it
    de-identified: ``{"count": n, "hash": sha256 of the sorted pseudonymized SOP Instance
    UIDs}``, compared with :class:`EdgeReceipt` rows by reconciliation.
    """

    __tablename__ = "site_heartbeats"

    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    edge_version: Mapped[str] = mapped_column(String(64))
    # The edge's clock minus the centre's when the heartbeat arrived, in seconds.
    clock_skew_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    outbox_depth: Mapped[int] = mapped_column(BigInteger, default=0)
    oldest_unsent_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_today: Mapped[int] = mapped_column(BigInteger, default=0)
    forwarded_today: Mapped[int] = mapped_column(BigInteger, default=0)
    quarantined_today: Mapped[int] = mapped_column(BigInteger, default=0)
    receipts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class EdgeReceipt(Base):
    """The day a site's edge received an instance the centre holds (for reconciliation).

    Written when an instance forwarded by an ``edge`` key is stored or found a duplicate, so
    the centre can group a site's instances by the edge's receipt day, as the edge does.
    """

    __tablename__ = "edge_receipts"
    __table_args__ = (Index("ix_edge_receipts_site_day", "site_id", "receipt_day"),)

    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    receipt_day: Mapped[dt.date] = mapped_column(Date)


class ServedPrediction(Base):
    """What clinician feedback on a prediction needs, kept past the prediction's memory TTL.

    Pseudonymous only: the study is the inference audit's keyed hash of its
    StudyInstanceUID (under the serving key), the site the caller's (edge site or API key
    name); no UID, name or pixel.
    """

    __tablename__ = "served_predictions"
    __table_args__ = (
        Index("ix_served_predictions_version_site", "model", "version", "site", "created_at"),
    )

    prediction_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    study: Mapped[str] = mapped_column(String(64), index=True)
    site: Mapped[str] = mapped_column(String(128))
    # The research pseudonym of the study (what de-identification at ingest makes its
    # StudyInstanceUID), so feedback can be imported as labels; None outside a campaign.
    research_study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner: Mapped[str] = mapped_column(String(128))
    # {finding: {"probability": p, "positive": bool}}
    findings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The input statistics the drift windows compare (medai.serving.monitoring.monitor).
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class PredictionFeedback(Base):
    """A clinician's agreement with one finding of a served prediction (the latest counts)."""

    __tablename__ = "prediction_feedback"
    __table_args__ = (UniqueConstraint("prediction_id", "finding", "actor"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("served_predictions.prediction_id"), index=True
    )
    finding: Mapped[str] = mapped_column(String(64))
    agree: Mapped[bool] = mapped_column(Boolean)
    # The final diagnosis as a code (e.g. ICD-10 or SNOMED CT), never free text.
    diagnosis_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
