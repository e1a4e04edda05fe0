"""The pilot CT model end to end: synthetic CT series -> series snapshot -> a 3-D MONAI network
trained, tracked and registered in MLflow like the radiograph model -> promoted.

One small run (24 CT studies of 8 slices of 32 px, a shallow 3-D ResNet, 2 epochs of batch 4
on the CPU) is shared by the checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from medai.config import Settings, get_settings
from medai.dicom.synth import SynthResult
from medai.errors import ModelConfigError
from medai.snapshots import load_snapshot
from medai.training.config import load_model_config
from medai.training.data import build_training_data
from medai.training.networks import network_from_config
from medai.training.tracking import CHAMPION_ALIAS, TrackedRun, promote, train_tracked
from tests.utils.ct_research import (
    CT_LABELS,
    CT_SLICES,
    build_ct_catalog,
    tiny_ct_config,
    tiny_ct_synth,
)

MODEL = "tiny-ct"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return tiny_ct_synth(tmp_path_factory.mktemp("ct-synth"))


@dataclass
class Trained:
    settings: Settings
    model_dir: Path
    tracked: TrackedRun


@pytest.fixture
def trained(
    settings: Settings, synth: SynthResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Trained]:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_ct_catalog(settings, synth)
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(tiny_ct_config(MODEL), encoding="utf-8")
    tracked = train_tracked(load_model_config(model_dir), settings, device="cpu")
    yield Trained(settings, model_dir, tracked)
    get_settings.cache_clear()


@pytest.mark.slow
@SQLITE
def test_the_3d_model_trains_on_volumes_registers_and_is_promoted(trained: Trained) -> None:
    settings, tracked = trained.settings, trained.tracked
    config = load_model_config(trained.model_dir)
    # One manifest row per series, each with all its slices.
    manifest = load_snapshot(config.data.snapshot, settings)
    assert set(manifest["slices"]) == {CT_SLICES}
    assert manifest["store_keys"].str.count("\n").eq(CT_SLICES - 1).all()
    # The loaders give volumes, (N, 1, D, H, W), and the network built from the config is 3-D.
    data = build_training_data(config, settings)
    batch = next(iter(data.loaders["val"]))
    assert tuple(batch["image"].shape[1:]) == (1, *config.transforms.image_size)
    network = network_from_config(config, len(CT_LABELS))
    assert any(isinstance(m, torch.nn.Conv3d) for m in network.modules())
    with torch.no_grad():
        assert tuple(network(batch["image"]).shape) == (batch["image"].shape[0], 1)

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_tracking_uri)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.level"] == "series"
    assert run.data.params["transforms.image_size"] == "8,24,24"
    assert "test/auroc/nodule" in run.data.metrics
    assert "val/threshold/nodule" in run.data.metrics
    version = client.get_model_version(MODEL, tracked.model_version)
    assert version.run_id == tracked.run_id
    # The registered model loads back and takes a volume.
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}/{tracked.model_version}")
    assert loaded is not None

    # A tiny test set cannot pass a real gate: promoted with an override and its reason.
    promote(MODEL, tracked.model_version, settings, override_gate=True, reason="test: tiny CT")
    champion = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert str(champion.version) == tracked.model_version


def test_series_level_needs_a_3d_image_size(tmp_path: Path) -> None:
    text = tiny_ct_config(MODEL).replace("image_size = [8, 24, 24]", "image_size = [24, 24]")
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ModelConfigError, match="needs 3 values"):
        load_model_config(tmp_path)
    flat = text.replace('level = "series"\n', "").replace("spacing_mm = [25.0, 12.5, 12.5]\n", "")
    (tmp_path / "config.toml").write_text(flat.replace("[24, 24]", "[4, 24, 24]"), "utf-8")
    with pytest.raises(ModelConfigError, match="needs 2 values"):
        load_model_config(tmp_path)


def test_the_ct_nodule_model_config_is_a_small_3d_network() -> None:
    config = load_model_config(Path(__file__).parents[2] / "models" / "ct-nodule")
    assert config.data.level == "series" and config.data.labels == ("nodule",)
    assert len(config.transforms.image_size) == 3 and config.transforms.spacing_mm is not None
    network = network_from_config(config, 1)
    assert sum(p.numel() for p in network.parameters()) < 1_000_000
    with torch.no_grad():
        out = network(torch.zeros(2, 1, *config.transforms.image_size))
    assert tuple(out.shape) == (2, 1)
