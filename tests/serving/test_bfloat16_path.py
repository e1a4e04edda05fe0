"""The bfloat16 forward pass in the service: served only where training accepted it, the
CPU has native bfloat16 units and the check at load passes; otherwise the service says why.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

import medai.training.precision as precision
from medai.config import Settings
from medai.serving.inference.fast_path import AGREEMENT, torch_backend
from tests.utils.served_model import (
    Champion,
    load_with_backend,
    preprocessed,
    shared_champion,
    train_champion,
)

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
NATIVE = pytest.mark.skipif(
    not precision.cpu_has_native_bfloat16(),
    reason="this CPU has no native bfloat16 units (AMX or AVX512-BF16)",
)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


@pytest.fixture(scope="module")
def bf16_champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """A champion of its own whose run's bfloat16 check was accepted, as training tags it.

    Its AUROC bound is opened: the tiny network's near-tied test scores reorder under any
    rounding (see tests/training/test_bfloat16.py); the probability bound stays.
    """
    import mlflow

    from medai.training.bfloat16 import check_bfloat16
    from medai.training.data import build_training_data
    from medai.training.export import load_version
    from medai.training.tracking import log_bfloat16

    root = tmp_path_factory.mktemp("bf16-champion")
    champion = train_champion(root, name="tiny-bf16")
    settings = champion.settings
    version = load_version(champion.name, champion.versions[0], settings)
    data = build_training_data(champion.config, settings)
    result = check_bfloat16(version.network(), champion.config, data, settings, max_auroc_delta=1.0)
    assert result.accepted, result.reason
    mlflow.set_tracking_uri(champion.tracking_uri)
    with mlflow.start_run(run_id=version.run_id):
        log_bfloat16(result)
    return champion


@NATIVE
@SQLITE
def test_bfloat16_agrees_with_the_torch_network_on_real_images(
    settings: Settings, bf16_champion: Champion
) -> None:
    model = load_with_backend(bf16_champion, settings, "bfloat16")
    assert model.backend_name == "torch-bfloat16", model.backend and model.backend.reason
    assert model.backend is not None and model.backend.max_abs_difference is not None
    assert 0 < model.backend.max_abs_difference <= AGREEMENT  # rounded: close, not equal
    files = [study[0] for study in bf16_champion.radiographs]
    batch = preprocessed(model, files)
    fast = model.predict(batch)
    reference = torch_backend(model.network, model.device, "reference").forward(batch)
    assert fast.shape == reference.shape == (len(files), len(model.labels))
    assert fast.dtype == np.float32
    assert float(np.max(np.abs(fast - reference))) <= AGREEMENT
    assert float(np.max(np.abs(model.predict(batch[:1]) - reference[:1]))) <= AGREEMENT
    # The served network itself stays float32 for Grad-CAM.
    assert next(model.network.parameters()).dtype == torch.float32


@NATIVE
@SQLITE
def test_auto_times_bfloat16_beside_the_others(settings: Settings, bf16_champion: Champion) -> None:
    model = load_with_backend(bf16_champion, settings, "auto")
    assert model.backend is not None
    reason = model.backend.reason
    for name in ("torch-bfloat16", "onnx", "torch"):
        assert re.search(rf"(^|\(|, ){re.escape(name)} [0-9.]+ ms", reason), (name, reason)


@SQLITE
def test_bfloat16_asked_for_on_a_version_training_did_not_accept_says_why(
    settings: Settings, champion: Champion, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medai.serving.inference.fast_path"):
        model = load_with_backend(champion, settings, "bfloat16")
    assert model.backend_name in ("onnx", "torch")  # as auto chooses between them
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "inference_backend = bfloat16 not used" in m and "trained without [export] bfloat16" in m
        for m in warnings
    ), warnings


@SQLITE
def test_bfloat16_is_refused_on_a_cpu_without_native_units(
    settings: Settings,
    bf16_champion: Champion,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Emulated bfloat16 is slower than float32: the service must not pick it there.
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="medai.serving.inference.fast_path"):
        model = load_with_backend(bf16_champion, settings, "bfloat16")
    assert model.backend_name in ("onnx", "torch")
    warnings = [r.getMessage() for r in caplog.records]
    assert any("no native bfloat16 units" in m for m in warnings), warnings
