"""Resumable training: a run stopped after epoch 2 and resumed ends as an uninterrupted one.

The model is small on purpose (MONAI's ``Classifier`` on 32 px, 4 epochs) but uses every
source of randomness a real run has: shuffling, medai's random rotation and zoom, an extra
random MONAI transform, AdamW's state and a cosine schedule. The uninterrupted run of the
same seed is the reference: the resumed run must log the same per-epoch metrics, choose
the same best epoch, and end with the same weights and test metrics.

Two ways to stop a run: an exception after epoch 2 (in process), and ``kill -9`` of a
``python -m medai.training`` process once the epoch-2 checkpoint is in MLflow (slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from medai.config import Settings, get_settings
from medai.errors import ResumeRefused
from medai.training.checkpoints import latest_checkpoint, slot_name
from medai.training.config import load_model_config
from medai.training.loop import EpochResult
from medai.training.tracking import TrackedRun, resume_tracked, train_tracked
from tests.utils.research import LABELS, build_tiny_catalog, tiny_synth

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MODEL = "tiny-resume"
EPOCHS = 4
CONFIG = f"""
name = "{MODEL}"
seed = 5
[data]
snapshot = "tiny"
labels = {list(LABELS)!r}
cache = "memory"
[transforms]
image_size = [32, 32]
[[transforms.extra]]
_target_ = "monai.transforms.RandGaussianNoised"
prob = 0.5
std = 0.05
[network]
_target_ = "monai.networks.nets.Classifier"
in_shape = ["@in_channels", 32, 32]
classes = "@num_labels"
channels = [4, 8]
strides = [2, 2]
dropout = 0.2
[optimizer]
lr = 3e-3
[schedule]
epochs = {EPOCHS}
batch_size = 4
patience = 0
[evaluation]
n_bootstrap = 50
min_auroc_ci_low = 0.0
"""
EPOCH_METRICS = ("train/loss", "val/loss", "val/auroc/macro", "lr")


class Stop(Exception):
    """Raised by a progress callback: the run stops as a crash would."""


@dataclass
class Campaign:
    settings: Settings
    model_dir: Path
    uri: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


@pytest.fixture
def campaign(settings: Settings, tmp_path: Path) -> Campaign:
    build_tiny_catalog(settings, tiny_synth(tmp_path / "synth"), "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(CONFIG, encoding="utf-8")
    return Campaign(settings, model_dir, settings.resolved_mlflow_tracking_uri)


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {
        name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        for name in EPOCH_METRICS
    }


def _weights(uri: str, run_id: str) -> dict[str, torch.Tensor]:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="weights/best.pt", tracking_uri=uri
    )
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def _assert_same_run(campaign: Campaign, reference: TrackedRun, resumed_id: str) -> None:
    client = campaign.client()
    expected, got = client.get_run(reference.run_id), client.get_run(resumed_id)
    assert got.info.status == "FINISHED"
    # Every epoch logged once, with the uninterrupted run's values.
    assert _history(client, resumed_id) == _history(client, reference.run_id)
    assert [step for step, _ in _history(client, resumed_id)["train/loss"]] == [1, 2, 3, 4]
    final = {k: v for k, v in expected.data.metrics.items() if k.startswith(("test/", "val/"))}
    assert final and {k: got.data.metrics.get(k) for k in final} == final
    assert got.data.metrics["best_epoch"] == expected.data.metrics["best_epoch"]
    first, second = _weights(campaign.uri, reference.run_id), _weights(campaign.uri, resumed_id)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # The resumed run registered its own version.
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert resumed_id in {v.run_id for v in versions}
    # Completed runs keep no checkpoints (only a run still to resume needs them), but
    # they keep their weights.
    for run_id in (reference.run_id, resumed_id):
        kept = [a.path for a in client.list_artifacts(run_id)]
        assert "checkpoints" not in kept and "weights" in kept, kept


@SQLITE
def test_a_run_stopped_after_epoch_2_resumes_to_the_same_metrics(campaign: Campaign) -> None:
    config = load_model_config(campaign.model_dir)
    reference = train_tracked(config, campaign.settings, device="cpu")
    assert len(reference.result.history) == EPOCHS

    stopped: list[str] = []

    def stop_after_two(result: EpochResult) -> None:
        if result.epoch == 2:
            run = mlflow.active_run()
            assert run is not None
            stopped.append(run.info.run_id)
            raise Stop

    with pytest.raises(Stop):
        train_tracked(config, campaign.settings, stop_after_two, device="cpu")
    (run_id,) = stopped
    # The checkpoint of epoch 2 is in the run, and nothing was registered for it.
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="checkpoints", tracking_uri=campaign.uri
    )
    checkpoint = latest_checkpoint(Path(local).glob("slot-*.pt"))
    assert checkpoint is not None and checkpoint.epoch == 2
    assert (Path(local) / slot_name(2)).is_file()

    seen: list[EpochResult] = []
    resumed = resume_tracked(run_id, campaign.settings, seen.append, device="cpu")
    assert resumed.run_id == run_id
    assert [r.epoch for r in seen] == [3, 4]  # epochs 1 and 2 were not trained again
    assert [r.epoch for r in resumed.result.history] == [1, 2, 3, 4]
    _assert_same_run(campaign, reference, run_id)

    with pytest.raises(ResumeRefused, match="finished: there is nothing to resume"):
        resume_tracked(run_id, campaign.settings, device="cpu")
    with pytest.raises(ResumeRefused, match="no MLflow run"):
        resume_tracked("0" * 32, campaign.settings, device="cpu")
    get_settings.cache_clear()


def _train_process(campaign: Campaign, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "medai.training", *args, "--device", "cpu", "--json"]
    return subprocess.Popen(
        command,
        env=env,
        cwd=campaign.model_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@SQLITE
def test_a_run_killed_with_sigkill_resumes_to_the_same_metrics(campaign: Campaign) -> None:
    reference = train_tracked(
        load_model_config(campaign.model_dir), campaign.settings, device="cpu"
    )
    artifacts = campaign.settings.resolved_home / "mlartifacts" / MODEL

    killed = _train_process(campaign, str(campaign.model_dir))
    deadline = time.monotonic() + 300
    pattern = f"*/artifacts/checkpoints/{slot_name(2)}"
    # The reference run has its checkpoints too: wait for one of another run.
    while not [p for p in artifacts.glob(pattern) if reference.run_id not in p.parts]:
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 300 s"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL

    client = campaign.client()
    experiment = client.get_experiment_by_name(MODEL)
    assert experiment is not None
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.info.run_id != reference.run_id
    ]
    (run,) = runs
    assert run.info.status == "RUNNING"  # killed: MLflow never heard it end
    slots = (artifacts / run.info.run_id / "artifacts" / "checkpoints").glob("slot-*.pt")
    last = latest_checkpoint(slots)
    assert last is not None and 2 <= last.epoch < EPOCHS  # epochs are left to train
    assert run.info.run_id not in {
        v.run_id for v in client.search_model_versions(f"name='{MODEL}'")
    }

    resumed = _train_process(campaign, "--resume", run.info.run_id)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    answer = json.JSONDecoder().raw_decode(output[output.index('{"') :])[0]
    assert answer["run_id"] == run.info.run_id
    _assert_same_run(campaign, reference, run.info.run_id)
    get_settings.cache_clear()
