"""Data-parallel training: ``torchrun --nproc_per_node 2 -m medai.training`` on the CPU (gloo).

One run of the tiny campaign in two processes must look, in MLflow, like one run: one
MLflow run, one registered version, metrics per epoch, output from rank 0 only; and its
test evaluation must be what a single process computes with the same weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from medai.config import Settings, get_settings
from medai.training import distributed
from medai.training.config import load_model_config
from medai.training.data import build_training_data
from medai.training.distributed import interleave
from medai.training.networks import build_network
from medai.training.prediction import evaluate_predictions, predict
from medai.training.tracking import CANDIDATE_ALIAS
from tests.utils.research import LABELS, build_tiny_catalog, tiny_model_config, tiny_synth

MODEL = "tiny-ddp"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_torchrun_two_processes_log_one_run(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_tiny_catalog(settings, tiny_synth(tmp_path / "synth"), "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(tiny_model_config(MODEL, "tiny"), encoding="utf-8")

    # --standalone: a rendezvous on a free local port, so parallel test runs do not clash.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "medai.training",
        str(model_dir),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Rank 0 alone prints the result table.
    assert done.stdout.count("test AUROC") == 1, done.stdout
    assert f"{MODEL} version 1 (alias candidate)" in done.stdout

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(MODEL)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.world_size"] == "2"
    assert run.data.params["train.device"] == "cpu"
    for name in ("train/loss", "val/loss", "val/auroc/macro", "lr"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
        assert all(np.isfinite(m.value) for m in history), name
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [str(v.version) for v in versions] == ["1"]
    candidate = client.get_model_version_by_alias(MODEL, CANDIDATE_ALIAS)
    assert str(candidate.version) == "1" and candidate.run_id == run.info.run_id

    # The registered model loads back and agrees with the logged best weights.
    # Both URIs: another test in this worker process may have pointed the registry elsewhere.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    loaded = mlflow.pytorch.load_model(f"models:/{MODEL}@{CANDIDATE_ALIAS}")
    weights = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="weights/best.pt", dst_path=str(tmp_path / "w")
    )
    net = build_network("resnet18", num_labels=len(LABELS))
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    batch = torch.from_numpy(np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), net(batch), rtol=1e-4, atol=1e-5)

    # The evaluation gathered from two shards is the one a single process computes on the
    # whole splits with the same weights: no image lost, none counted twice, and the rows
    # in manifest order (the bootstrap CIs resample rows, so they depend on the order).
    config = load_model_config(model_dir)
    data = build_training_data(config, settings)
    cpu = torch.device("cpu")
    val_true, val_prob, _, _ = predict(net, data.loaders["val"], cpu)
    test_true, test_prob, test_sites, _ = predict(net, data.loaders["test"], cpu)
    assert len(test_true) == len(data.records["test"])
    tests, vals = data.test_cases, data.val_cases
    assert tests is not None and vals is not None
    expected = evaluate_predictions(
        config, val_true, val_prob, test_true, test_prob, test_sites,
        test_patients=tests["patient"].tolist(),
        test_studies=tests["study_uid"].tolist(),
        val_studies=vals["study_uid"].tolist(),
    ).table  # fmt: skip
    table = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="evaluation/test.csv", dst_path=str(tmp_path / "e")
    )
    logged = pd.read_csv(table, keep_default_na=False, na_values=[""])
    expected = expected.reset_index(drop=True)
    # Counts and rank statistics exactly; probabilities (thresholds, calibration) to float32
    # rounding, since the shards are batched differently from the whole split.
    exact = ["label", "site", "n", "n_positive", "auroc", "auroc_low", "auroc_high"]
    exact += ["sensitivity", "specificity"]
    pd.testing.assert_frame_equal(logged[exact], expected[exact], check_dtype=False)
    pd.testing.assert_frame_equal(logged, expected, check_dtype=False, rtol=1e-5)
    get_settings.cache_clear()


def test_interleave_undoes_strided_shards() -> None:
    items = list(range(7))
    for world in (1, 2, 3, 8):
        assert interleave([items[rank::world] for rank in range(world)]) == items


def test_helpers_pass_through_in_a_world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    labels = np.array([[1.0, np.nan], [0.0, 1.0]])
    with distributed.process_group("cpu") as context:
        assert (context.rank, context.world_size, context.backend) == (0, 1, None)
        assert context.is_main and distributed.is_main_process()
        assert distributed.broadcast_object("x") == "x"
        assert distributed.all_reduce_sum([1.5, 2], context.device) == [1.5, 2.0]
        gathered = distributed.gather_split(labels, labels, ["a", "b"], (0.5, 3))
        assert gathered[0] is labels and gathered[2:] == (["a", "b"], (0.5, 3))
    assert not torch.distributed.is_initialized()
    # Launched by torchrun, a bare "cuda" means this process's own GPU.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.resolve_device("cuda") == torch.device("cuda", 1)
    assert distributed.resolve_device("cpu") == torch.device("cpu")
