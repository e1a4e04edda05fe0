"""End to end: synthetic studies -> catalog -> snapshot -> training tracked in MLflow -> gate.

One small run (20 studies of 32 px, a ResNet-18, 2 epochs of batch 4, on the CPU) is
shared by the checks: MLflow's record of it, the registered model loading back with the
same outputs, determinism of the first epoch, and promotion through the gate both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from medai.cli import app
from medai.config import Settings, get_settings
from medai.dicom.synth import SynthResult
from medai.errors import PromotionRefused
from medai.training.config import load_model_config
from medai.training.data import make_dataset, make_loader
from medai.training.loop import EpochResult
from medai.training.prediction import masked_bce_with_logits
from medai.training.tracking import (
    CANDIDATE_ALIAS,
    CHAMPION_ALIAS,
    TrackedRun,
    promote,
    train_tracked,
)
from medai.training.transforms import TransformConfig, build_transforms
from tests.utils.research import LABELS, build_tiny_catalog, tiny_model_config, tiny_synth

MODEL = "tiny-triage"
# 20 radiograph studies of seed 1, with a fixed campaign key, split 50/25/25 give both classes
# of every label in the validation and test splits (the assertions on the evaluation table
# check it), and 9 training images: batches of 4, 4 and 1, the last dropped.
CONFIG = tiny_model_config(MODEL, "tiny")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return tiny_synth(tmp_path_factory.mktemp("synth"))


@dataclass
class Trained:
    settings: Settings
    model_dir: Path
    tracked: TrackedRun
    epochs: list[EpochResult]


@pytest.fixture
def trained(
    settings: Settings, synth: SynthResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Trained]:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_tiny_catalog(settings, synth, "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(CONFIG, encoding="utf-8")
    epochs: list[EpochResult] = []
    tracked = train_tracked(load_model_config(model_dir), settings, epochs.append, device="cpu")
    yield Trained(settings, model_dir, tracked, epochs)
    get_settings.cache_clear()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_train_track_register_load_and_promote(trained: Trained) -> None:
    tracked, settings = trained.tracked, trained.settings
    result = tracked.result
    assert [e.epoch for e in trained.epochs] == [1, 2]
    assert all(np.isfinite(e.train_loss) and np.isfinite(e.val_loss) for e in trained.epochs)
    pooled = result.evaluation.table[result.evaluation.table["site"] == "all"]
    assert list(pooled["label"]) == list(LABELS)
    assert pooled["auroc_low"].notna().all()
    assert set(result.evaluation.table["site"]) > {"all"}  # per-site rows too

    client = MlflowClient(
        tracking_uri=settings.resolved_mlflow_tracking_uri,
        registry_uri=settings.resolved_mlflow_tracking_uri,
    )
    run = client.get_run(tracked.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["schedule.epochs"] == "2" and params["data.labels"] == ",".join(LABELS)
    assert params["snapshot.name"] == "tiny" and len(params["snapshot.content_hash"]) >= 16
    assert run.data.tags["medai.snapshot_hash"] == params["snapshot.content_hash"]
    # No identifiers: no parameter holds a DICOM UID (2.25.<int> after pseudonymization).
    assert not any(value.startswith(("1.2.", "2.25.")) for value in params.values())
    assert {"train/loss", "val/loss", "test/auroc/nodule", "test/auroc_low/effusion"} <= set(
        metrics
    )
    history = client.get_metric_history(tracked.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {
        f.path
        for folder in ("config", "evaluation", "plots")
        for f in client.list_artifacts(tracked.run_id, folder)
    }
    assert {"config/resolved.json", "evaluation/test.csv"} <= artifacts
    assert {f"plots/roc_{label}.png" for label in LABELS} <= artifacts
    assert (settings.resolved_home / "mlartifacts" / MODEL).is_dir()  # not ./mlruns

    version = client.get_model_version_by_alias(MODEL, CANDIDATE_ALIAS)
    assert str(version.version) == tracked.model_version and version.run_id == tracked.run_id

    # The registered model gives the trained model's outputs, for any batch size.
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    loaded = mlflow.pytorch.load_model(f"models:/{MODEL}@{CANDIDATE_ALIAS}")
    batch = torch.from_numpy(np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), result.model(batch))
    info = mlflow.models.get_model_info(f"models:/{MODEL}@{CANDIDATE_ALIAS}")
    assert info.signature is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 32, 32)

    # `medai train` with the same seed: the same epoch losses, a second version as candidate.
    runner = CliRunner()
    out = runner.invoke(app, ["train", str(trained.model_dir), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "test AUROC" in out.output and f"{MODEL} version 2 (alias candidate)" in out.output
    second = client.get_model_version_by_alias(MODEL, CANDIDATE_ALIAS)
    assert str(second.version) == "2" and second.run_id != tracked.run_id
    again = client.get_metric_history(second.run_id, "train/loss")
    assert [m.value for m in sorted(again, key=lambda m: m.step)] == pytest.approx(
        [e.train_loss for e in trained.epochs], rel=1e-6
    )

    # Promotion: a gate of 1.01 is refused with the labels that fail; 0.0 (the config) passes.
    with pytest.raises(PromotionRefused, match="nodule: lower CI bound of AUROC") as refused:
        promote(MODEL, tracked.model_version, settings, min_auroc_ci_low=1.01)
    assert [f.label for f in refused.value.failures] == list(LABELS)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)

    out = runner.invoke(
        app, ["models", "promote", MODEL, tracked.model_version, "--min-auroc-ci-low", "1.01"]
    )
    assert out.exit_code == 1 and "short by" in out.output
    out = runner.invoke(app, ["models", "promote", MODEL, tracked.model_version])
    assert out.exit_code == 0, out.output
    assert "is now champion" in out.output
    champion = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert str(champion.version) == tracked.model_version


# -- building blocks, without a catalog ------------------------------------------------------


def test_masked_loss_ignores_unknown_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    known = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.stack([logits[0, 0], logits[1, 0], logits[1, 1]]), torch.tensor([1.0, 0.0, 1.0])
    )
    loss = masked_bce_with_logits(logits, targets)
    torch.testing.assert_close(loss, known)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 1] == 0.0
    nothing = masked_bce_with_logits(logits, torch.full((2, 2), float("nan")))
    assert float(nothing.detach()) == 0.0


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_datasets_cache_and_seeded_shuffle(cache: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = [
        {"image": rng.random((1, 20, 20), dtype=np.float32), "label": np.array([i % 2, np.nan])}
        for i in range(5)
    ]
    chain = build_transforms(TransformConfig(image_size=(16, 16)), train=True, seed=3)
    dataset = make_dataset(records, chain, cache, cache_dir=tmp_path / "cache")
    loader = make_loader(dataset, batch_size=2, shuffle=True, seed=5, threaded=cache == "memory")
    batches = list(loader)
    # 5 items in batches of 2: the lone last one is dropped (batch normalisation needs 2).
    assert [len(b["image"]) for b in batches] == [2, 2]
    assert batches[0]["image"].shape == (2, 1, 16, 16)
    assert batches[0]["image"].dtype == torch.float32
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # the dropped one unread
    chain2 = build_transforms(TransformConfig(image_size=(16, 16)), train=True, seed=3)
    again = make_loader(
        make_dataset(records, chain2, cache, cache_dir=tmp_path / "cache"),
        batch_size=2,
        shuffle=True,
        seed=5,
        threaded=cache == "memory",
    )
    for first, second in zip(batches, again, strict=True):
        torch.testing.assert_close(first["image"], second["image"])
        torch.testing.assert_close(first["label"], second["label"], equal_nan=True)
