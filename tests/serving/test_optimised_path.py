"""The optimised forward pass (ONNX Runtime) agrees with the torch network, or is refused.

On the tiny champion (a real ResNet-18 trained on synthetic radiographs): the ONNX path
chosen at load gives the probabilities of the torch network on real synthetic images;
the service answers the same shape on both backends; an export that disagrees (other
weights) or fails is refused at load, the torch network serves, and the log says why;
the per-stage timings reach ``/metrics``. A version whose run has an int8 model
(``serving/model-int8.onnx``) serves it as ``onnx-int8`` when asked for or fastest, after
the same check; asked for on a version without one, the service says why and goes on.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import medai.training.export as export
from medai.config import Settings
from medai.errors import ExportFailed
from medai.serving.app import create_app
from medai.serving.inference.fast_path import AGREEMENT, torch_backend
from tests.serving.helpers import TestClient, bearer, new_key
from tests.utils.served_model import (
    Champion,
    load_with_backend,
    preprocessed,
    reference_probabilities,
    shared_champion,
    train_champion,
    wait_ready,
)

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DICOM = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


@pytest.fixture(scope="module")
def int8_champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """A champion of its own whose run has an int8 model, made as training makes it.

    The tiny network's test AUROCs move under int8 (near-ties on 10 images, see
    tests/training/test_quantize.py), so its AUROC bound is opened here; the service's
    own check at load (every probability within AGREEMENT) is what these tests exercise.
    """
    import mlflow

    from medai.training.data import build_training_data
    from medai.training.export import load_version
    from medai.training.quantize import quantize_trained
    from medai.training.tracking import log_int8

    root = tmp_path_factory.mktemp("int8-champion")
    champion = train_champion(root, name="tiny-int8")
    settings = champion.settings
    version = load_version(champion.name, champion.versions[0], settings)
    data = build_training_data(champion.config, settings)
    result = quantize_trained(
        version.network(), champion.config, data, settings, max_auroc_delta=1.0
    )
    assert result.accepted, result.reason
    mlflow.set_tracking_uri(champion.tracking_uri)
    with mlflow.start_run(run_id=version.run_id):
        log_int8(result, root)
    return champion


@SQLITE
def test_onnx_agrees_with_the_torch_network_on_real_images(
    settings: Settings, champion: Champion
) -> None:
    model = load_with_backend(champion, settings, "onnx")
    assert model.backend_name == "onnx", model.backend and model.backend.reason
    assert model.backend is not None and model.backend.max_abs_difference is not None
    assert model.backend.max_abs_difference <= AGREEMENT
    files = [study[0] for study in champion.radiographs]
    assert len(files) >= 4
    batch = preprocessed(model, files)
    fast = model.predict(batch)
    reference = torch_backend(model.network, model.device, "reference").forward(batch)
    assert fast.shape == reference.shape == (len(files), len(model.labels))
    assert float(np.max(np.abs(fast - reference))) <= AGREEMENT
    # ... and with the network as training evaluated it, rebuilt apart from the service.
    expected = reference_probabilities(champion, model.version, files).numpy()
    assert float(np.max(np.abs(fast - expected))) <= AGREEMENT
    # One image alone, as an idle service forwards it: the batch axis is dynamic.
    assert float(np.max(np.abs(model.predict(batch[:1]) - reference[:1]))) <= AGREEMENT


@SQLITE
def test_torch_is_served_when_asked_for(settings: Settings, champion: Champion) -> None:
    model = load_with_backend(champion, settings, "torch")
    assert model.backend_name == "torch"
    assert model.backend is not None and "asked for" in model.backend.reason


def _perturbed_export(original: Any) -> Any:
    """write_onnx that exports other weights: an optimised model that went wrong."""

    def write(version: export.RegisteredVersion, path: Path, images: export.CheckImages) -> None:
        generator = torch.Generator().manual_seed(1)
        state = {
            key: value + torch.randn(value.shape, generator=generator) * 0.5
            if value.is_floating_point() and "running" not in key  # variances stay positive
            else value
            for key, value in version.state.items()
        }
        broken = export.RegisteredVersion(
            version.name, version.version, version.run_id, version.config,
            version.thresholds, state,
        )  # fmt: skip
        original(broken, path, images)

    return write


@SQLITE
def test_a_disagreeing_onnx_model_is_refused_atload_with_backend(
    settings: Settings,
    champion: Champion,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(export, "write_onnx", _perturbed_export(export.write_onnx))
    with caplog.at_level(logging.WARNING, logger="medai.serving.inference.fast_path"):
        model = load_with_backend(champion, settings, "onnx")
    assert model.backend_name == "torch"
    assert model.backend is not None
    assert "differ from the torch network" in model.backend.reason
    assert any("ONNX Runtime refused at load" in r.getMessage() for r in caplog.records)
    # The fallback is the reference itself.
    batch = preprocessed(model, [champion.radiographs[0][0]])
    reference = torch_backend(model.network, model.device, "reference").forward(batch)
    assert np.array_equal(model.predict(batch), reference)


@SQLITE
def test_a_failed_export_falls_back_to_torch_and_says_why(
    settings: Settings, champion: Champion, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object) -> None:
        raise ExportFailed("torch.onnx.export cannot export this network: a test")

    monkeypatch.setattr(export, "write_onnx", fail)
    model = load_with_backend(champion, settings, "auto")
    assert model.backend_name == "torch"
    assert model.backend is not None
    assert "cannot export this network" in model.backend.reason


def _stage_counts(metrics: str) -> dict[str, float]:
    found = re.findall(
        r'^medai_inference_stage_seconds_count\{stage="([a-z]+)"\} ([0-9.e+-]+)$',
        metrics,
        re.MULTILINE,
    )
    return {stage: float(count) for stage, count in found}


@SQLITE
def test_both_backends_answer_alike_and_time_every_stage(
    campaign: Settings, champion: Champion
) -> None:
    data = champion.radiographs[0][0].read_bytes()
    answers: dict[str, dict[str, Any]] = {}
    for backend in ("torch", "onnx"):
        settings = champion.serving_settings(
            campaign, inference_backend=backend, model_poll_seconds=0.0
        )
        key = new_key(settings, "clinician", f"{backend}-clinician")
        admin = new_key(settings, "admin", f"{backend}-admin")
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            response = client.post("/v1/predict", content=data, headers=bearer(key) | DICOM)
            assert response.status_code == 200, response.text
            answers[backend] = answer = response.json()
            heatmap = client.get(answer["heatmap_url"], headers=bearer(key))
            assert heatmap.status_code == 200
            metrics = client.get("/metrics", headers=bearer(admin)).text
        counts = _stage_counts(metrics)
        for stage in ("decode", "preprocess", "queue", "forward", "postprocess", "audit"):
            assert counts.get(stage) == 1, (backend, stage, counts)
        assert counts.get("gradcam") == 1, counts  # drawn on demand, once
    torch_answer, onnx_answer = answers["torch"], answers["onnx"]
    assert set(torch_answer) == set(onnx_answer)
    assert set(torch_answer["timing_ms"]) == set(onnx_answer["timing_ms"])
    for ours, theirs in zip(torch_answer["findings"], onnx_answer["findings"], strict=True):
        assert set(ours) == set(theirs)
        assert ours["label"] == theirs["label"]
        assert ours["probability"] == pytest.approx(theirs["probability"], abs=AGREEMENT)


@SQLITE
def test_int8_agrees_with_the_torch_network_on_real_images(
    settings: Settings, int8_champion: Champion
) -> None:
    model = load_with_backend(int8_champion, settings, "int8")
    assert model.backend_name == "onnx-int8", model.backend and model.backend.reason
    assert model.backend is not None and model.backend.max_abs_difference is not None
    assert 0 < model.backend.max_abs_difference <= AGREEMENT  # int8: close, not equal
    files = [study[0] for study in int8_champion.radiographs]
    batch = preprocessed(model, files)
    fast = model.predict(batch)
    reference = torch_backend(model.network, model.device, "reference").forward(batch)
    assert fast.shape == reference.shape == (len(files), len(model.labels))
    assert float(np.max(np.abs(fast - reference))) <= AGREEMENT
    assert float(np.max(np.abs(model.predict(batch[:1]) - reference[:1]))) <= AGREEMENT


@SQLITE
def test_auto_times_the_int8_model_beside_the_others(
    settings: Settings, int8_champion: Champion
) -> None:
    model = load_with_backend(int8_champion, settings, "auto")
    assert model.backend is not None
    reason = model.backend.reason
    assert reason.startswith("fastest ("), reason
    for name in ("onnx-int8", "onnx", "torch"):
        assert re.search(rf"(^|\(|, ){re.escape(name)} [0-9.]+ ms", reason), (name, reason)
    assert model.backend_name in ("onnx-int8", "onnx", "torch")
    batch = preprocessed(model, [int8_champion.radiographs[0][0]])
    reference = torch_backend(model.network, model.device, "reference").forward(batch)
    assert float(np.max(np.abs(model.predict(batch) - reference))) <= AGREEMENT


@SQLITE
def test_torch_is_served_when_asked_for_beside_an_int8_model(
    settings: Settings, int8_champion: Champion
) -> None:
    model = load_with_backend(int8_champion, settings, "torch")
    assert model.backend_name == "torch"


@SQLITE
def test_int8_asked_for_without_an_int8_model_says_why(
    settings: Settings, champion: Champion, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medai.serving.inference.fast_path"):
        model = load_with_backend(champion, settings, "int8")
    assert model.backend_name in ("onnx", "torch")  # as auto chooses between them
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "inference_backend = int8 not used" in m and "trained without [export] int8" in m
        for m in warnings
    ), warnings
