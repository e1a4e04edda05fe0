"""Re-sent images in snapshots: listed once, and their patients kept in one split."""

from __future__ import annotations

from medai.collection.campaign.definition import load_campaign
from medai.collection.campaign.setup import init_campaign
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.snapshots import SnapshotQuery, create_snapshot, load_snapshot
from medai.snapshots.splits import assign_splits, merge_resends
from tests.utils.campaign import EXAMPLE_CAMPAIGN, dataset_bytes
from tests.utils.deid_factories import make_ct

FRACTIONS = (0.5, 0.25, 0.25)


def _row(patient: str, instance_id: int, pixel_hash: str | None) -> dict[str, object]:
    return {"patient": patient, "instance_id": instance_id, "pixel_hash": pixel_hash}


def test_merge_resends_keeps_the_first_arrival_and_links_patients_transitively() -> None:
    rows = [
        _row("P-B", 5, "h1"),  # a re-send of P-A's image (arrived later: higher id)
        _row("P-A", 2, "h1"),
        _row("P-B", 6, "h2"),
        _row("P-C", 9, "h2"),  # P-C shares another image with P-B: one group of three
        _row("P-D", 7, None),  # not hashed: never dropped, never linked
        _row("P-E", 8, "h3"),
    ]
    kept, groups = merge_resends(rows)
    assert [(r["patient"], r["instance_id"]) for r in kept] == [
        ("P-A", 2),
        ("P-B", 6),
        ("P-D", 7),
        ("P-E", 8),
    ]
    assert groups == {"P-A": "P-A", "P-B": "P-A", "P-C": "P-A"}


def test_linked_patients_share_a_split_and_unlinked_ones_are_unchanged() -> None:
    patients = {f"P{i:02d}": ("site-a", ()) for i in range(40)}
    pairs = {f"P{i:02d}": f"P{i - i % 2:02d}" for i in range(40)}
    for seed in range(5):
        linked = assign_splits(patients, FRACTIONS, seed, pairs)
        assert all(linked[p] == linked[g] for p, g in pairs.items())
        assert set(linked.values()) == {"train", "val", "test"}
        # No links: exactly the assignment snapshots made before links existed.
        assert assign_splits(patients, FRACTIONS, seed, {}) == assign_splits(
            patients, FRACTIONS, seed
        )
    # The check can fail: without the links, some pair is split for some seed.
    assert any(
        len({assign_splits(patients, FRACTIONS, seed)[p] for p in (f"P{i:02d}", f"P{i + 1:02d}")})
        > 1
        for seed in range(5)
        for i in range(0, 40, 2)
    )


def test_a_resend_under_a_new_mrn_stays_in_the_split_of_the_original(settings: Settings) -> None:
    init_campaign(load_campaign(EXAMPLE_CAMPAIGN), settings)
    pipeline = IngestPipeline.from_settings(settings)
    for index in range(12):
        ds = make_ct(patient_id=f"MRN-{index}", seed=100 + index, size=8)
        assert pipeline.ingest(dataset_bytes(ds), "site-a", "folder").kind == "stored"
    # MRN-0's image again, as patient NEW-0 (new MRN, new UIDs), plus one image of its own.
    resend = make_ct(patient_id="NEW-0", seed=100, size=8)
    own = make_ct(patient_id="NEW-0", seed=999, size=8, study_uid=resend.StudyInstanceUID)
    for ds in (resend, own):
        assert pipeline.ingest(dataset_bytes(ds), "site-a", "folder").kind == "stored"

    pseudo = pipeline.deidentifier.pseudonymizer
    pair = {pseudo.patient_pseudonym("Issuer Hospital", mrn) for mrn in ("MRN-0", "NEW-0")}
    splits_seen: set[str] = set()
    for seed in range(6):
        create_snapshot(
            f"resend-{seed}",
            SnapshotQuery(labelled_only=False),
            seed=seed,
            fractions=FRACTIONS,
            settings=settings,
            actor="test",
        )
        frame = load_snapshot(f"resend-{seed}", settings)
        assert len(frame) == 13  # 14 stored, the re-sent image listed once
        assert frame["store_key"].is_unique
        assert frame["patient"].nunique() == 13  # NEW-0 is there with its own image
        linked = frame[frame["patient"].isin(pair)]
        assert len(linked) == 2 and linked["split"].nunique() == 1, seed
        splits_seen.update(frame["split"])
    assert splits_seen == {"train", "val", "test"}
