"""Series-level snapshots: one row per series assembled into a volume, refused series listed."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medai.cli import app
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.snapshots import BASE_COLUMNS, SnapshotQuery, create_snapshot, load_snapshot
from medai.snapshots.manifest import SERIES_COLUMNS
from medai.store import ObjectStore
from medai.training.volume_reader import read_series
from tests.utils.campaign import dataset_bytes, init_example_campaign
from tests.utils.ct_series import SAGITTAL, ct_series
from tests.utils.deid_factories import UID_ROOT

FINDINGS = ["cardiomegaly", "effusion", "nodule"]
SERIES = SnapshotQuery(level="series", labelled_only=False)


@pytest.fixture
def volumes(settings: Settings) -> Settings:
    """Four CT series of four patients, ingested with their instances shuffled.

    - ``good``: 5 slices 2.5 mm apart, plus a localizer in the same series;
    - ``gap``: 6 slices with the 4th missing;
    - ``resent``: 4 slices, one of them sent again under a new SOP Instance UID;
    - ``clash``: 4 slices, two of them at one position with different pixels.
    """
    init_example_campaign(settings)
    good = ct_series([2.5 * k for k in range(5)], patient_id="MRN-GOOD", seed=1)
    localizer = ct_series(
        [0.0],
        patient_id="MRN-GOOD",
        study_uid=good[0].StudyInstanceUID,
        series_uid=good[0].SeriesInstanceUID,
        orientation=SAGITTAL,
        seed=9,
    )[0]
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.FrameOfReferenceUID = good[0].FrameOfReferenceUID
    gap = ct_series([2.0 * k for k in range(6) if k != 3], patient_id="MRN-GAP", seed=2)
    resent = ct_series([3.0 * k for k in range(4)], patient_id="MRN-RESENT", seed=3)
    again = pydicom.dcmread(io.BytesIO(dataset_bytes(resent[2])))
    again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = generate_uid(UID_ROOT)
    clash = ct_series([2.0, 4.0, 4.0, 6.0], patient_id="MRN-CLASH", seed=4)
    datasets = [*good, localizer, *gap, *resent, again, *clash]
    random.Random(5).shuffle(datasets)
    pipeline = IngestPipeline.from_settings(settings)
    outcomes = [pipeline.ingest(dataset_bytes(ds), "site-a", "folder") for ds in datasets]
    assert {o.kind for o in outcomes} == {"stored"}
    return settings


def _positions(store: ObjectStore, keys: str) -> list[float]:
    """Each slice's position along z (axial series), read back from the de-identified files."""
    headers = [
        pydicom.dcmread(io.BytesIO(store.read(key)), stop_before_pixels=True)
        for key in keys.split("\n")
    ]
    return [float(ds.ImagePositionPatient[2]) for ds in headers]


def test_a_series_snapshot_has_one_row_per_volume_and_lists_refused_series(
    volumes: Settings,
) -> None:
    info = create_snapshot("ct-volumes", SERIES, settings=volumes, actor="test")
    frame = load_snapshot("ct-volumes", settings=volumes)

    assert list(frame.columns) == [*BASE_COLUMNS, *SERIES_COLUMNS, *FINDINGS, "split"]
    assert info.level == "series" and info.query["modalities"] == ["CT", "MR", "PT"]
    assert len(frame) == 2 and frame["patient"].is_unique
    by_slices = frame.set_index("slices")
    store = ObjectStore(volumes.resolved_store_dir)
    # The good series: 5 slices in order along the normal, the localizer left out.
    good = by_slices.loc[5]
    assert _positions(store, good["store_keys"]) == pytest.approx([2.5 * k for k in range(5)])
    assert good["spacing_mm"] == "2.5,0.8,0.7"
    assert good["store_key"] == good["store_keys"].split("\n")[0]
    # The re-sent slice is one slice: 4, 3 mm apart.
    resent = by_slices.loc[4]
    assert _positions(store, resent["store_keys"]) == pytest.approx([0.0, 3.0, 6.0, 9.0])
    assert resent["spacing_mm"] == "3,0.8,0.7"

    assert sorted((e["reason"], e["message"]) for e in info.excluded) == [
        (
            "duplicate-position",
            "two slices lie at one position (4.00 mm along the normal) with different "
            "pixels: which one belongs to the volume is unknown",
        ),
        (
            "missing-slice",
            "1 slice(s) missing: gap(s) of 4.00 mm where the spacing is 2.00 mm "
            "(after slice 3 of 5)",
        ),
    ]
    assert not {e["series_uid"] for e in info.excluded} & set(frame["series_uid"])
    total = info.counts["total"]
    assert (total["series"], total["instances"], total["patients"]) == (2, 9, 2)
    assert sum(info.counts[s]["series"] for s in ("train", "val", "test")) == 2

    # The rows read as volumes, in the snapshot's order.
    volume = read_series(good["store_keys"], store)
    assert volume.shape == (1, 5, 8, 8)

    # Same catalog, same hash; the instance level is unchanged beside it.
    again = create_snapshot("ct-volumes-2", SERIES, settings=volumes, actor="test")
    assert again.content_hash == info.content_hash
    instances = create_snapshot(
        "ct-instances", SnapshotQuery(labelled_only=False), settings=volumes, actor="test"
    )
    listed = load_snapshot("ct-instances", settings=volumes)
    assert list(listed.columns) == [*BASE_COLUMNS, *FINDINGS, "split"]
    # 20 stored, the re-sent slice listed once.
    assert len(listed) == 19 and instances.excluded == () and "series" not in instances.counts


def test_deidentification_keeps_the_geometry_a_volume_needs(volumes: Settings) -> None:
    info = create_snapshot("geometry", SERIES, settings=volumes, actor="test")
    frame = load_snapshot(info.name, settings=volumes)
    store = ObjectStore(volumes.resolved_store_dir)
    ds = pydicom.dcmread(io.BytesIO(store.read(frame["store_key"].iloc[0])))
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.ImagePositionPatient][:2] == [-100.0, -120.0]
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.7]
    assert float(ds.SliceThickness) == 2.0
    assert ds.FrameOfReferenceUID.startswith("2.25.")  # pseudonymized, kept
    assert "MRN" not in str(ds.PatientID)
    assert np.asarray(ds.pixel_array).shape == (8, 8)


def test_the_cli_creates_a_series_snapshot_and_prints_the_refused_series(
    volumes: Settings, tmp_path: Path
) -> None:
    runner = CliRunner()
    created = runner.invoke(
        app,
        ["snapshot", "create", "--name", "cli-ct", "--level", "series", "--all-studies"],
    )
    assert created.exit_code == 0, created.output
    assert "Series left out" in created.stdout and "missing-slice" in created.stdout
    assert "Series" in created.stdout
    shown = runner.invoke(app, ["snapshot", "show", "cli-ct", "--json"])
    record = json.loads(shown.stdout)
    assert record["level"] == "series"
    assert sorted(e["reason"] for e in record["excluded"]) == [
        "duplicate-position",
        "missing-slice",
    ]
    assert record["counts"]["total"]["series"] == 2
    bad = runner.invoke(app, ["snapshot", "create", "--name", "x", "--level", "study"])
    assert bad.exit_code != 0 and "unknown snapshot level 'study'" in bad.output

    exported = runner.invoke(app, ["snapshot", "export", "cli-ct", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 9  # every slice of the two series
    assert [p.name for p in files if p.parent == files[0].parent][:2] == ["0001.dcm", "0002.dcm"]
