"""Provenance of a training run, read back from MLflow (issue 13, item 5).

One tiny run (the research test campaign, a ResNet-18 on 32 px, 2 epochs) trained with
an override, as a notebook does, and then read back from MLflow: the code's version and
commit as tags, the snapshot's splits as dataset inputs with the manifest's digest, the
resolved configuration as the one configuration artifact, per-label validation AUROC per
epoch, thresholds named for the validation split they were chosen on, and a pyfunc model
that returns probabilities by label and the positives at those thresholds.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

import medai
from medai.config import Settings, get_settings
from medai.dicom.synth import SynthResult
from medai.training.config import apply_overrides, load_model_config
from medai.training.loop import EpochResult
from medai.training.provenance import DIGEST_LENGTH, source_tags
from medai.training.pyfunc import POSITIVES_PARAM, ProbabilityModel, positive_column
from medai.training.tracking import CANDIDATE_ALIAS, train_tracked
from tests.utils.research import LABELS, build_tiny_catalog, tiny_model_config, tiny_synth

MODEL = "prov-triage"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return tiny_synth(tmp_path_factory.mktemp("synth"))


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_records_its_code_data_configuration_and_outputs(
    settings: Settings, synth: SynthResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_tiny_catalog(settings, synth, "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(tiny_model_config(MODEL, epochs=3), encoding="utf-8")
    # As a notebook does: the file says 3 epochs, the run is trained for 2.
    config = apply_overrides(load_model_config(model_dir), {"schedule": {"epochs": 2}})
    tracked = train_tracked(config, settings, device="cpu")
    result = tracked.result
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(tracked.run_id)
    tags, metrics = run.data.tags, run.data.metrics

    # The code: medai's version and, in this checkout, its commit.
    assert tags["medai.version"] == medai.__version__
    if (REPO / ".git").exists():
        assert tags["medai.git_commit"] == _git("rev-parse", "HEAD")
        assert tags["mlflow.source.git.commit"] == tags["medai.git_commit"]
        assert (
            tags["medai.git_dirty"]
            == str(bool(_git("status", "--porcelain", "--", "medai"))).lower()
        )

    # The data: each split of the snapshot is a dataset input with the manifest's digest.
    content_hash = result.snapshot["content_hash"]
    assert run.inputs is not None
    inputs = {
        i.dataset.name: (
            i.dataset.digest,
            {t.key: t.value for t in i.tags}["mlflow.data.context"],
            json.loads(str(i.dataset.profile))["num_rows"],
        )
        for i in run.inputs.dataset_inputs
    }
    counts = result.snapshot["counts"]
    assert inputs == {
        f"tiny/{split}": (content_hash[:DIGEST_LENGTH], context, counts[split]["instances"])
        for split, context in (("train", "training"), ("val", "validation"), ("test", "test"))
    }

    # The configuration: one artifact, the one trained with (the override, not the file).
    assert [f.path for f in client.list_artifacts(tracked.run_id, "config")] == [
        "config/resolved.json"
    ]
    logged = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=tracked.run_id,
                artifact_path="config/resolved.json",
                dst_path=str(tmp_path / "dl"),
                tracking_uri=uri,
            )
        ).read_text("utf-8")
    )
    assert logged == config.model_dump(mode="json") and logged["schedule"]["epochs"] == 2
    assert run.data.params["schedule.epochs"] == "2"

    # Validation AUROC per label, every epoch where the label has both classes.
    assert len(result.history) == 2
    for label in LABELS:
        expected = [e.epoch for e in result.history if not math.isnan(e.val_label_auroc[label])]
        steps = client.get_metric_history(tracked.run_id, f"val/auroc/{label}")
        assert sorted(m.step for m in steps) == expected
    assert any(
        len(client.get_metric_history(tracked.run_id, f"val/auroc/{label}")) == 2
        for label in LABELS
    )
    history = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=tracked.run_id,
            artifact_path="evaluation/history.csv",
            dst_path=str(tmp_path / "dl"),
            tracking_uri=uri,
        )
    )
    assert {f"val_auroc_{label}" for label in LABELS} <= set(history.columns)

    # Thresholds are validation's: no test/.../threshold metric, one val/threshold per label.
    assert not [k for k in metrics if "threshold" in k and not k.startswith("val/threshold/")]
    table = result.evaluation.table
    pooled = table[table["site"] == "all"].drop_duplicates("label").set_index("label")
    thresholds = [float(pooled.loc[label, "threshold"]) for label in LABELS]
    for label, threshold in zip(LABELS, thresholds, strict=True):
        if math.isnan(threshold):
            assert f"val/threshold/{label}" not in metrics
        else:
            assert metrics[f"val/threshold/{label}"] == pytest.approx(threshold)
    assert any(f"val/threshold/{label}" in metrics for label in LABELS)

    # The registered model's pyfunc: probabilities by label, and positives when asked.
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CANDIDATE_ALIAS}")
    batch = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
    out = model.predict(batch)
    assert list(out.columns) == list(LABELS) and len(out) == 3
    values = out.to_numpy()
    assert ((values >= 0.0) & (values <= 1.0)).all()
    with torch.no_grad():
        expected_p = torch.sigmoid(result.model(torch.from_numpy(batch))).numpy()
    np.testing.assert_allclose(values, expected_p, rtol=1e-5, atol=1e-6)
    called = model.predict(batch, params={POSITIVES_PARAM: True})
    for label, threshold in zip(LABELS, thresholds, strict=True):
        column = called[positive_column(label)]
        if math.isnan(threshold):
            assert column.isna().all()
        else:
            assert column.tolist() == (called[label] >= threshold).tolist()
    version = client.get_model_version(MODEL, tracked.model_version)
    assert version.tags["medai.version"] == medai.__version__
    get_settings.cache_clear()


# -- building blocks, without a run ---------------------------------------------------------


def test_source_tags_outside_a_checkout_name_the_version_only(tmp_path: Path) -> None:
    assert source_tags(tmp_path) == {"medai.version": medai.__version__}


def test_source_tags_in_a_checkout_say_whether_the_package_differs(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    package = tmp_path / "medai"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "init")
    clean = source_tags(tmp_path)
    assert clean["medai.git_commit"] == git("rev-parse", "HEAD")
    assert clean["medai.git_dirty"] == "false"
    (package / "__init__.py").write_text("x = 2\n")
    assert source_tags(tmp_path)["medai.git_dirty"] == "true"


def test_epoch_metrics_carry_each_labels_validation_auroc() -> None:
    epoch = EpochResult(
        epoch=3,
        train_loss=0.5,
        val_loss=0.6,
        val_auroc=0.8,
        lr=1e-3,
        seconds=1.0,
        best=True,
        val_label_auroc={"nodule": 0.7, "effusion": 0.9, "cardiomegaly": math.nan},
    )
    metrics = epoch.metrics()
    assert metrics["val/auroc/nodule"] == 0.7 and metrics["val/auroc/effusion"] == 0.9
    assert "val/auroc/cardiomegaly" not in metrics  # NaN: one class only
    assert metrics["val/auroc/macro"] == 0.8


def test_probability_model_without_a_threshold_says_na_not_negative() -> None:
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model = ProbabilityModel(network, ["a", "b"], [0.0, math.nan])
    out = model.predict(np.zeros((2, 1, 2, 2), dtype=np.float32), {POSITIVES_PARAM: True})
    assert list(out.columns) == ["a", "b", "a_positive", "b_positive"]
    assert out["a_positive"].tolist() == [True, True]
    assert out["b_positive"].isna().all()
