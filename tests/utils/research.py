"""A tiny research campaign for end-to-end tests: synthetic radiographs in a catalog, labelled,
frozen in a snapshot, and a small model configuration that trains on it in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from medai.collection.labels import import_label_sheet
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.snapshots import SnapshotQuery, create_snapshot, load_snapshot
from tests.utils.campaign import init_example_campaign

LABELS = ("nodule", "effusion", "cardiomegaly")
# A fixed campaign key: pseudonyms, hence the patient split, are the same every run.
CAMPAIGN_KEY = "5e" * 32
FRACTIONS = (0.5, 0.25, 0.25)


def tiny_synth(directory: Path) -> SynthResult:
    """30 radiograph studies of 32 px (seed 1, the "tiny" difficulty), with their label sheets."""
    return generate(directory, studies=30, seed=1, image_size=32, ct_slices=0, difficulty="tiny")


def ingest_labelled(settings: Settings, synth: SynthResult, sheets: dict[str, Path]) -> None:
    """The example campaign under the fixed key, with ``synth`` ingested and ``sheets``
    (site -> label sheet) imported."""
    key = settings.resolved_key_file
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(CAMPAIGN_KEY + "\n", encoding="ascii")
    key.chmod(0o600)
    init_example_campaign(settings)
    IngestPipeline.from_settings(settings).ingest_many(
        [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    )
    for site, sheet in sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="test")


def build_tiny_catalog(settings: Settings, synth: SynthResult, snapshot: str = "tiny") -> None:
    """The example campaign with ``synth`` ingested and labelled, and snapshot ``snapshot``.

    The 50/25/25 split's seed is the first that gives every split both classes of every
    label in :data:`LABELS` (snapshots ``probe-<seed>`` are left from the search).
    """
    ingest_labelled(settings, synth, synth.label_sheets)
    query = SnapshotQuery(modalities=("CR", "DX"))
    create_snapshot(
        snapshot, query, seed=_seed_with_both_classes(settings, query), settings=settings,
        fractions=FRACTIONS,
    )  # fmt: skip


def _seed_with_both_classes(settings: Settings, query: SnapshotQuery) -> int:
    """The first split seed that puts both classes of every label in every split.

    Splits are keyed per patient, not stratified: on 20 studies a seed can leave a split
    without a class. Probing with throw-away snapshots keeps the fixture valid whatever the
    generator draws.
    """
    for seed in range(100):
        probe = f"probe-{seed}"
        create_snapshot(probe, query, seed=seed, fractions=FRACTIONS, settings=settings)
        frame = load_snapshot(probe, settings)
        if all(
            set(frame.loc[frame["split"] == split, label].dropna()) == {0, 1}
            for split in ("train", "val", "test")
            for label in LABELS
        ):
            return seed
    raise AssertionError("no split seed under 100 gives both classes of every label")


def tiny_model_config(name: str, snapshot: str = "tiny", *, epochs: int = 2) -> str:
    """A model config (TOML) for the tiny snapshot: a ResNet-18 on 32 px, batches of 4."""
    return f"""
name = "{name}"
seed = 7
[data]
snapshot = "{snapshot}"
labels = {list(LABELS)!r}
cache = "memory"
[transforms]
image_size = [32, 32]
[network]
name = "resnet18"
[optimizer]
lr = 1e-3
[schedule]
epochs = {epochs}
batch_size = 4
patience = 0
[evaluation]
n_bootstrap = 50
min_auroc_ci_low = 0.0
"""
