"""A tiny CT research campaign for end-to-end tests: synthetic chest CT series in a catalog,
labelled from the CT sheets, frozen in a series-level snapshot, and a small 3-D model config
that trains on it in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.snapshots import SnapshotQuery, create_snapshot, load_snapshot
from tests.utils.research import ingest_labelled

CT_LABELS = ("nodule",)
CT_SLICES, CT_SIZE = 8, 32
FRACTIONS = (0.5, 0.25, 0.25)


def tiny_ct_synth(directory: Path, studies: int = 24) -> SynthResult:
    """CT studies of two sites (8 slices of 32 px, the "tiny" difficulty, seed 2)."""
    return generate(
        directory,
        studies=studies,
        seed=2,
        sites=("site-a", "site-b"),
        image_size=CT_SIZE,
        ct_slices=CT_SLICES,
        ct_every=1,
        difficulty="tiny",
    )


def build_ct_catalog(settings: Settings, synth: SynthResult, snapshot: str = "ct-tiny") -> None:
    """The example campaign with ``synth`` ingested, its CT sheets imported, and a series-level
    snapshot ``snapshot`` whose splits all hold both classes of ``nodule``."""
    ingest_labelled(settings, synth, synth.ct_label_sheets)
    query = SnapshotQuery(modalities=("CT",), level="series")
    for seed in range(100):
        probe = f"ct-probe-{seed}"
        create_snapshot(probe, query, seed=seed, fractions=FRACTIONS, settings=settings)
        frame = load_snapshot(probe, settings)
        if all(
            set(frame.loc[frame["split"] == split, "nodule"].dropna()) == {0, 1}
            for split in ("train", "val", "test")
        ):
            create_snapshot(snapshot, query, seed=seed, fractions=FRACTIONS, settings=settings)
            return
    raise AssertionError("no split seed under 100 gives both classes of nodule in every split")


def tiny_ct_config(name: str, snapshot: str = "ct-tiny", *, epochs: int = 2) -> str:
    """A 3-D model config (TOML): a shallow MONAI ResNet on 8 x 24 x 24 volumes, batches of 4,
    the series resampled to 25 x 12.5 x 12.5 mm first."""
    return f"""
name = "{name}"
seed = 3
[data]
snapshot = "{snapshot}"
labels = {list(CT_LABELS)!r}
level = "series"
cache = "memory"
[transforms]
spacing_mm = [25.0, 12.5, 12.5]
image_size = [8, 24, 24]
[network]
_target_ = "monai.networks.nets.ResNet"
block = "basic"
layers = [1, 1, 1, 1]
block_inplanes = [4, 8, 16, 32]
spatial_dims = "@spatial_dims"
n_input_channels = "@in_channels"
num_classes = "@num_labels"
conv1_t_stride = 2
[optimizer]
lr = 3e-3
[schedule]
epochs = {epochs}
batch_size = 4
patience = 0
[evaluation]
n_bootstrap = 50
min_auroc_ci_low = 0.0
"""
