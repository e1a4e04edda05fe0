"""Dataset snapshots: patient-level splits, determinism, filters, hash checks, export, CLI."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Snapshot, Study, StudyLabel
from medai.cli import app
from medai.collection.labels import import_label_sheet
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.errors import (
    SnapshotError,
    SnapshotExists,
    SnapshotNotFound,
    SnapshotTampered,
    UnknownSite,
)
from medai.snapshots import (
    BASE_COLUMNS,
    SnapshotQuery,
    assign_splits,
    create_snapshot,
    export_snapshot,
    get_snapshot,
    list_snapshots,
    load_snapshot,
    parse_fractions,
)
from tests.utils.campaign import init_example_campaign

FINDINGS = ["cardiomegaly", "effusion", "nodule"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(
        tmp_path_factory.mktemp("synth"), studies=12, seed=3, image_size=32, ct_slices=2
    )


@pytest.fixture
def catalog(settings: Settings, synth: SynthResult) -> Settings:
    """The example campaign with every synthetic study ingested and every sheet imported."""
    init_example_campaign(settings)
    IngestPipeline.from_settings(settings).ingest_many(
        [
            Offer(path.read_bytes(), record.site, "folder")
            for record in synth.study_records
            for path in record.files
        ]
    )
    for site, sheet in synth.label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="test")
    return settings


def _audit_actions(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))
    finally:
        engine.dispose()


def _no_patient_in_two_splits(frame: pd.DataFrame) -> None:
    per_patient = frame.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all()


def test_create_is_patient_level_deterministic_and_immutable(catalog: Settings) -> None:
    first = create_snapshot("chest-v1", settings=catalog, actor="test")
    again = create_snapshot("chest-v1-again", settings=catalog, actor="test")
    assert first.content_hash == again.content_hash
    assert first.manifest == catalog.resolved_home / "snapshots/chest-v1/manifest.parquet"

    frame = load_snapshot("chest-v1", settings=catalog)
    assert frame.equals(load_snapshot("chest-v1-again", settings=catalog))
    _no_patient_in_two_splits(frame)
    assert set(frame["split"]) <= {"train", "val", "test"}
    assert "train" in set(frame["split"])
    # Default query: labelled studies only, so every row has at least one label.
    assert frame[FINDINGS].notna().any(axis=1).all()
    assert first.query["findings"] == FINDINGS and first.query["labelled_only"] is True
    total = first.counts["total"]
    assert total["instances"] == len(frame)
    assert total["patients"] == frame["patient"].nunique()
    assert total["studies"] == frame["study_uid"].nunique()
    assert sum(first.counts[s]["instances"] for s in ("train", "val", "test")) == len(frame)
    ordered = frame.sort_values(["patient", "study_uid", "series_uid", "sop_instance_uid"])
    assert list(ordered.index) == list(frame.index)

    # Another seed shuffles patients differently (the content hash changes with it).
    hashes = {
        create_snapshot(f"seed-{seed}", seed=seed, settings=catalog).content_hash
        for seed in range(1, 5)
    }
    assert hashes - {first.content_hash}

    with pytest.raises(SnapshotExists, match="already exists"):
        create_snapshot("chest-v1", seed=9, settings=catalog)
    with pytest.raises(SnapshotError, match="invalid snapshot name"):
        create_snapshot("../escape", settings=catalog)
    with pytest.raises(SnapshotNotFound, match="chest-v1"):
        get_snapshot("nope", settings=catalog)
    assert [info.name for info in list_snapshots(catalog)][:2] == ["chest-v1", "chest-v1-again"]
    assert _audit_actions(catalog).count("snapshot.create") == 6


def test_query_filters_and_conflicts(catalog: Settings) -> None:
    site_a = create_snapshot("site-a", SnapshotQuery(sites=("site-a",)), settings=catalog)
    frame = load_snapshot(site_a.name, settings=catalog)
    assert set(frame["site"]) == {"site-a"}
    assert site_a.query["sites"] == ["site-a"]

    nodule = create_snapshot(
        "nodule", SnapshotQuery(findings=("Nodule",), modalities=("dx", "cr")), settings=catalog
    )
    frame = load_snapshot(nodule.name, settings=catalog)
    assert list(frame.columns) == [*BASE_COLUMNS, "nodule", "split"]
    assert set(frame["modality"]) <= {"DX", "CR"}
    assert frame["nodule"].notna().all()

    # CT studies have no label sheet rows: none are labelled, all are taken with --all-studies.
    with pytest.raises(SnapshotError, match="no instances match"):
        create_snapshot("ct", SnapshotQuery(modalities=("CT",)), settings=catalog)
    ct = create_snapshot(
        "ct-all", SnapshotQuery(modalities=("CT",), labelled_only=False), settings=catalog
    )
    frame = load_snapshot(ct.name, settings=catalog)
    assert set(frame["modality"]) == {"CT"}
    assert frame[FINDINGS].isna().all().all()
    assert (frame.groupby("series_uid").size() > 1).all()  # one row per CT slice
    _no_patient_in_two_splits(frame)

    with pytest.raises(UnknownSite):
        create_snapshot("x", SnapshotQuery(sites=("site-z",)), settings=catalog)
    with pytest.raises(SnapshotError, match="unknown finding"):
        create_snapshot("x", SnapshotQuery(findings=("fracture",)), settings=catalog)
    with pytest.raises(SnapshotError, match="invalid split"):
        parse_fractions("0.8,0.3,0.1")

    # A label flagged as a conflict counts as missing.
    engine = create_engine_for(catalog.resolved_database_url)
    try:
        with session_factory(engine).begin() as session:
            study_id, finding = session.execute(
                select(StudyLabel.study_id, StudyLabel.finding).order_by(StudyLabel.id).limit(1)
            ).one()
            session.execute(
                update(StudyLabel)
                .where(StudyLabel.study_id == study_id, StudyLabel.finding == finding)
                .values(conflict=True)
            )
            study_uid = session.scalar(select(Study.study_uid).where(Study.id == study_id))
    finally:
        engine.dispose()
    create_snapshot("with-conflict", SnapshotQuery(labelled_only=False), settings=catalog)
    frame = load_snapshot("with-conflict", settings=catalog)
    assert frame.loc[frame["study_uid"] == study_uid, finding].isna().all()


def test_load_gives_typed_frame_and_detects_tampering(catalog: Settings) -> None:
    info = create_snapshot("typed", settings=catalog)
    frame = load_snapshot("typed", settings=catalog)
    assert list(frame.columns) == [*BASE_COLUMNS, *FINDINGS, "split"]
    for column in ("patient", "study_uid", "sop_instance_uid", "site", "store_key", "split"):
        assert pd.api.types.is_string_dtype(frame[column]), column
    assert frame["rows"].dtype == pd.Int32Dtype()
    for finding in FINDINGS:
        assert frame[finding].dtype == pd.Int8Dtype()
        assert set(frame[finding].dropna()) <= {0, 1}
    assert frame.attrs["snapshot"]["content_hash"] == info.content_hash
    assert frame["patient"].str.fullmatch(r"P[A-Z2-7]{16}").all()
    assert frame["sop_instance_uid"].str.startswith("2.25.").all()

    # Same content re-encoded (another compression): still the same snapshot.
    table = pq.read_table(info.manifest)
    info.manifest.unlink()
    pq.write_table(table, info.manifest, compression="gzip")
    load_snapshot("typed", settings=catalog)

    # One label flipped: refused.
    column = table.column("nodule").to_pylist()
    index = next(i for i, v in enumerate(column) if v is not None)
    column[index] = 1 - column[index]
    tampered = table.set_column(
        table.schema.get_field_index("nodule"), "nodule", pa.array(column, pa.int8())
    )
    info.manifest.unlink()
    pq.write_table(tampered, info.manifest)
    with pytest.raises(SnapshotTampered, match="altered"):
        load_snapshot("typed", settings=catalog)
    info.manifest.unlink()
    with pytest.raises(SnapshotTampered, match="missing"):
        load_snapshot("typed", settings=catalog)


def test_export_writes_a_deidentified_dicom_tree(catalog: Settings, tmp_path: Path) -> None:
    info = create_snapshot("share", settings=catalog)
    out = tmp_path / "partner"
    seen: list[tuple[int, int]] = []
    result = export_snapshot(
        "share", out, settings=catalog, progress=lambda d, t: seen.append((d, t))
    )
    frame = load_snapshot("share", settings=catalog)
    assert result.files == len(frame) == seen[-1][0] == seen[-1][1]
    dcm = sorted(out.rglob("*.dcm"))
    assert len(dcm) == len(frame)
    by_sop = frame.set_index("sop_instance_uid")
    for path in dcm:
        ds = pydicom.dcmread(path)
        row = by_sop.loc[str(ds.SOPInstanceUID)]
        relative = path.relative_to(out).parts
        assert relative == (row["patient"], row["study_uid"], row["series_uid"], path.name)
        assert str(ds.StudyInstanceUID) == row["study_uid"]
        assert str(ds.SeriesInstanceUID) == row["series_uid"]
        assert str(ds.PatientID) == row["patient"]
    description = json.loads((out / "snapshot.json").read_text())
    assert description["content_hash"] == info.content_hash
    assert description["counts"] == info.counts
    assert pd.read_parquet(out / "manifest.parquet").shape == frame.shape
    csv_frame = pd.read_csv(out / "manifest.csv", dtype=str)
    assert len(csv_frame) == len(frame)
    assert all((out / f).is_file() for f in csv_frame["file"])

    with pytest.raises(SnapshotError, match="not an empty directory"):
        export_snapshot("share", out, settings=catalog)
    assert _audit_actions(catalog)[-1] == "snapshot.export"


def test_cli(catalog: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    for command in ([], ["create"], ["list"], ["show"], ["export"]):
        result = runner.invoke(app, ["snapshot", *command, "--help"])
        assert result.exit_code == 0, result.output

    created = runner.invoke(
        app,
        ["snapshot", "create", "--name", "cli-v1", "--site", "site-a", "--site", "site-b",
         "--seed", "7", "--split", "0.6,0.2,0.2", "--json"],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    record = json.loads(created.stdout.strip().splitlines()[-1])
    assert record["seed"] == 7 and record["query"]["sites"] == ["site-a", "site-b"]
    assert record["fractions"] == {"train": 0.6, "val": 0.2, "test": 0.2}

    listed = runner.invoke(app, ["snapshot", "list", "--json"])
    assert [s["name"] for s in json.loads(listed.stdout)] == ["cli-v1"]
    shown = runner.invoke(app, ["snapshot", "show", "cli-v1", "--json"])
    assert json.loads(shown.stdout)["content_hash"] == record["content_hash"]
    assert "Content hash" in runner.invoke(app, ["snapshot", "show", "cli-v1"]).stdout
    assert "cli-v1" in runner.invoke(app, ["snapshot", "list"]).stdout

    again = runner.invoke(app, ["snapshot", "create", "--name", "cli-v1"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["snapshot", "create", "--name", "x", "--split", "1,1"])
    assert bad.exit_code == 2 and "invalid split" in bad.output
    missing = runner.invoke(app, ["snapshot", "show", "nope"])
    assert missing.exit_code == 2 and "no snapshot named" in missing.output

    exported = runner.invoke(app, ["snapshot", "export", "cli-v1", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    assert "Exported snapshot cli-v1" in exported.stdout
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == record["counts"]["total"]["instances"]
    refused = runner.invoke(app, ["snapshot", "export", "cli-v1", str(tmp_path / "out")])
    assert refused.exit_code == 2 and "not an empty directory" in refused.output


def test_splits_spread_in_proportion_on_a_larger_set() -> None:
    rng = random.Random(0)
    patients = {
        f"P{i:05d}": (
            rng.choice(["site-a", "site-b", "site-c"]),
            tuple(f for f in FINDINGS if rng.random() < 0.3),
        )
        for i in range(1200)
    }
    fractions = (0.7, 0.15, 0.15)
    splits = assign_splits(patients, fractions, seed=1)
    assert splits.keys() == patients.keys()  # each patient exactly once
    assert splits == assign_splits(dict(reversed(patients.items())), fractions, seed=1)
    assert splits != assign_splits(patients, fractions, seed=2)
    # Keyed per patient, not stratified: sizes and strata follow the fractions binomially
    # (within 3 standard deviations).
    sizes = Counter(splits.values())
    for split, fraction in zip(("train", "val", "test"), fractions, strict=True):
        assert abs(sizes[split] / len(patients) - fraction) < 0.035, sizes
    strata: dict[tuple[str, tuple[str, ...]], Counter[str]] = {}
    for patient, key in patients.items():
        strata.setdefault(key, Counter())[splits[patient]] += 1
    for key, counts in strata.items():
        n = sum(counts.values())
        if n >= 20:  # every large stratum is spread in proportion
            for split, fraction in zip(("train", "val", "test"), fractions, strict=True):
                spread = 3 * (n * fraction * (1 - fraction)) ** 0.5 + 1
                assert abs(counts[split] - fraction * n) <= spread, (key, counts)
    for site in ("site-a", "site-b", "site-c"):
        assert {splits[p] for p, (s, _) in patients.items() if s == site} == {
            "train",
            "val",
            "test",
        }
    # A zero fraction is honoured.
    assert "test" not in set(assign_splits(patients, (0.8, 0.2, 0.0), seed=1).values())


def test_snapshot_row_is_recorded(catalog: Settings) -> None:
    create_snapshot("recorded", seed=5, fractions=(0.5, 0.25, 0.25), settings=catalog)
    engine = create_engine_for(catalog.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            row = session.scalars(select(Snapshot)).one()
    finally:
        engine.dispose()
    assert row.manifest_path == "snapshots/recorded/manifest.parquet"
    assert row.seed == 5 and row.fractions == {"train": 0.5, "val": 0.25, "test": 0.25}
    assert len(row.content_hash) == 64 and row.actor
