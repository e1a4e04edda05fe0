"""Splits stay put as data grows: a patient's split is a keyed function of the patient alone,
and snapshots of one seed and test fraction share (and record) one locked test set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medai.cli import app
from medai.collection.labels import import_label_sheet
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.snapshots import SnapshotQuery, create_snapshot, load_snapshot
from medai.snapshots.splits import assign_splits, locked_test_set_id, patient_set_hash
from tests.utils.campaign import init_example_campaign
from tests.utils.research import CAMPAIGN_KEY

FRACTIONS = (0.5, 0.25, 0.25)


def _ingest(settings: Settings, synth: SynthResult, records: slice) -> None:
    IngestPipeline.from_settings(settings).ingest_many(
        [
            Offer(path.read_bytes(), record.site, "folder")
            for record in synth.study_records[records]
            for path in record.files
        ]
    )


def _splits(name: str, settings: Settings) -> dict[str, str]:
    frame = load_snapshot(name, settings)
    return dict(zip(frame["patient"], frame["split"], strict=True))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_adding_40_studies_moves_no_patient_and_keeps_the_test_set(
    settings: Settings, tmp_path: Path
) -> None:
    synth = generate(tmp_path / "synth", studies=60, seed=11, image_size=32, ct_slices=0)
    # A fixed campaign key: the same pseudonyms, hence the same keyed splits, every run (with
    # a random key, the first 20 studies' few patients could miss a split by chance).
    key = settings.resolved_key_file
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(CAMPAIGN_KEY + "\n", encoding="ascii")
    key.chmod(0o600)
    init_example_campaign(settings)
    _ingest(settings, synth, slice(0, 20))
    query = SnapshotQuery(labelled_only=False)
    first = create_snapshot("before", query, fractions=FRACTIONS, settings=settings)
    assert first.test_set is not None and first.test_set["earlier"] is None
    before = _splits("before", settings)

    _ingest(settings, synth, slice(20, 60))  # 40 more studies: new patients, maybe old ones
    for site, sheet in synth.label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="test")
    second = create_snapshot("after", query, fractions=FRACTIONS, settings=settings)
    after = _splits("after", settings)

    assert len(after) > len(before)
    moved = {p: (split, after[p]) for p, split in before.items() if after[p] != split}
    assert moved == {}
    # Every split grew, so the check above compared patients in every split.
    assert set(before.values()) == set(after.values()) == {"train", "val", "test"}

    # The second snapshot says which test set it shares with the first, and how much of it.
    assert second.test_set is not None
    assert second.test_set["id"] == first.test_set["id"] == locked_test_set_id(0, FRACTIONS[2])
    earlier_test = sum(1 for split in before.values() if split == "test")
    assert second.test_set["earlier"] == {
        "snapshot": "before",
        "test_patients": earlier_test,
        "present": earlier_test,
        "still_test": earlier_test,
        "moved": 0,
    }
    assert second.test_set["patients"] == sum(1 for s in after.values() if s == "test")
    assert second.test_set["patients_sha256"] == patient_set_hash(
        p for p, s in after.items() if s == "test"
    )

    # Another seed is another test set: nothing is shared with the first two.
    other = create_snapshot("other", query, seed=1, fractions=FRACTIONS, settings=settings)
    assert other.test_set is not None
    assert other.test_set["id"] != first.test_set["id"] and other.test_set["earlier"] is None

    shown = CliRunner().invoke(app, ["snapshot", "show", "after"])
    assert shown.exit_code == 0, shown.output
    assert f"Locked test set {first.test_set['id']}" in shown.output
    assert f"holds {earlier_test} of the {earlier_test} test patients of before" in shown.output


def test_a_patients_split_depends_on_the_patient_alone() -> None:
    everyone = [f"patient-{i:04d}" for i in range(4000)]
    full = assign_splits(everyone, FRACTIONS, seed=3)
    # Any subset, in any order, gets the same splits: a growing campaign moves nobody.
    subset = everyone[::7][::-1]
    assert assign_splits(subset, FRACTIONS, seed=3) == {p: full[p] for p in subset}
    # The fractions hold, binomially (4000 patients: 3 sd is about 0.02).
    sizes = Counter(full.values())
    for split, fraction in zip(("train", "val", "test"), FRACTIONS, strict=True):
        assert abs(sizes[split] / len(everyone) - fraction) < 0.025, sizes
    # The test set depends on the test fraction only: moving val into train leaves it.
    rebalanced = assign_splits(everyone, (0.7, 0.05, 0.25), seed=3)
    assert {p for p, s in rebalanced.items() if s == "test"} == {
        p for p, s in full.items() if s == "test"
    }
    assert locked_test_set_id(3, 0.25) == locked_test_set_id(3, 0.1 + 0.15)
    # Another seed is another draw, and a zero test fraction takes nobody into test.
    assert assign_splits(everyone, FRACTIONS, seed=4) != full
    assert "test" not in set(assign_splits(everyone, (0.8, 0.2, 0.0), seed=3).values())
