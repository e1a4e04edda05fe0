"""``medai models export``: a registered version as a MONAI bundle and as ONNX, each checked
against the served model's outputs, and a tampered export caught by that check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from monai.bundle import ConfigParser
from onnx import numpy_helper
from typer.testing import CliRunner

from medai.cli import app
from medai.config import Settings, get_settings
from medai.errors import ExportFailed
from medai.training import export
from medai.training.config import ModelConfig, load_model_config
from medai.training.export import (
    ONNX_FILE,
    TOLERANCE,
    RegisteredVersion,
    check_images,
    export_model,
    load_version,
    verify_bundle,
    verify_onnx,
)
from medai.training.tracking import train_tracked
from medai.training.transforms import build_transforms
from tests.utils.research import LABELS, build_tiny_catalog, tiny_model_config, tiny_synth

MODEL = "tiny-export"


# A network medai does not list, by its MONAI path only (issue 15's `_target_` configs).
SMALL_DENSENET = {
    "_target_": "monai.networks.nets.DenseNet",
    "spatial_dims": "@spatial_dims",
    "in_channels": "@in_channels",
    "out_channels": "@num_labels",
    "init_features": 8,
    "growth_rate": 4,
    "block_config": [2, 2],
}
# An evaluation transform from the config: the bundle's preprocessing must apply it too.
SMOOTHING = {"_target_": "monai.transforms.GaussianSmoothd", "sigma": 1.0, "_train_only_": False}


def _config(
    network: str | dict[str, object] = "resnet18",
    size: tuple[int, ...] = (32, 32),
    extra: tuple[dict[str, object], ...] = (),
) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": MODEL,
            "data": {
                "snapshot": "absent",
                "labels": list(LABELS),
                "level": "series" if len(size) == 3 else "instance",
            },
            "transforms": {"image_size": list(size), "extra": list(extra)},
            "network": {"name": network} if isinstance(network, str) else network,
        }
    )


def _version(config: ModelConfig) -> RegisteredVersion:
    """A version with trained-looking weights: a seeded network whose batch-norm statistics
    are not the identity (so a bundle that dropped them would differ)."""
    torch.manual_seed(3)
    network = export.rebuild_network(config)
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.rand(4, 1, *config.transforms.image_size) * 3.0)
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return RegisteredVersion(MODEL, "3", "run-x", config, (0.4, math.nan, 0.6), state)


def _session_probabilities(path: Path, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": batch})
    return np.asarray(probabilities)


def _served(version: RegisteredVersion, batch: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(version.network()(batch)).numpy()


def test_onnx_export_matches_torch_and_a_tampered_file_is_caught(tmp_path: Path) -> None:
    version = _version(_config())
    images = check_images(version.config, Settings(home=tmp_path / "home"), limit=5)
    assert "random images" in images.source and images.batch.shape == (5, 1, 32, 32)
    path = tmp_path / ONNX_FILE
    export._write_onnx(version, path, images)
    assert verify_onnx(path, version, images) <= TOLERANCE

    # The batch axis is dynamic: one image and seven give torch's probabilities.
    for n in (1, 7):
        batch = torch.rand(n, 1, 32, 32)
        got = _session_probabilities(path, batch.numpy())
        assert got.shape == (n, len(LABELS))
        assert np.max(np.abs(got - _served(version, batch))) <= TOLERANCE
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["medai.labels"]) == list(LABELS)
    assert json.loads(props["medai.thresholds"]) == {
        "nodule": 0.4,
        "effusion": None,
        "cardiomegaly": 0.6,
    }

    # One weight of the file changed: the check fails, naming the difference.
    model = onnx.load(str(path))
    initializer = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(initializer).copy()
    values.flat[: values.size // 2] *= -1.0
    initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    onnx.save(model, str(path))
    with pytest.raises(ExportFailed, match="differs from the served model by up to"):
        verify_onnx(path, version, images)


BUNDLE_CASES = {
    "resnet18": _config("resnet18"),
    "densenet121": _config("densenet121"),
    "torchvision_resnet18": _config("torchvision_resnet18"),
    "target+extra": _config(SMALL_DENSENET, extra=(SMOOTHING,)),
    "resnet18-3d": _config("resnet18", size=(8, 16, 16)),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_bundle_rebuilds_with_monai_config_parser(tmp_path: Path, case: str) -> None:
    config = BUNDLE_CASES[case]
    network = config.network.title
    version = _version(config)
    size = tuple(config.transforms.image_size)
    images = check_images(version.config, Settings(home=tmp_path / "home"), limit=3)
    root = tmp_path / "bundle"
    export._write_bundle(version, root, images)
    assert verify_bundle(root, version, images) <= TOLERANCE

    # What a MONAI user does with the folder, without medai's help.
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    parser.get_parsed_content("initialize")
    net = parser.get_parsed_content("network")
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    # An image of another size than the network's: the bundle's preprocessing resizes it.
    raw = [np.random.default_rng(5).random((1, *(2 * s for s in size)), dtype=np.float32)]
    batch = torch.stack([pre({"image": image})["image"] for image in raw])
    with torch.inference_mode():
        got = post({"pred": net(batch)})["pred"].numpy()
    chain = build_transforms(version.config.transforms, train=False)
    served = _served(version, torch.stack([chain({"image": r})["image"] for r in raw]))
    assert np.max(np.abs(got - served)) <= TOLERANCE

    meta = json.loads((root / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == list(size)
    assert fmt["outputs"]["pred"]["channel_def"] == {
        "0": "nodule",
        "1": "effusion",
        "2": "cardiomegaly",
    }
    assert meta["medai"]["thresholds"]["effusion"] is None
    inference = json.loads((root / "configs" / "inference.json").read_text())
    target = inference["network_def"]
    # MONAI's own networks need no medai to load; torchvision's are rebuilt by medai.
    medai_built = network == "torchvision_resnet18"
    assert target["_target_"].startswith("medai." if medai_built else "monai.")
    if case == "target+extra":
        assert target["out_channels"] == 3 and target["spatial_dims"] == 2  # "@" filled
        steps = [s["_target_"] for s in inference["preprocessing"]["transforms"]]
        assert "monai.transforms.GaussianSmoothd" in steps

    # Tampered weights: MONAI loads them, the check refuses them.
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.dtype.is_floating_point and v.dim() >= 4)
    state[name] = state[name] * 1.5
    torch.save(state, root / "models" / "model.pt")
    with pytest.raises(ExportFailed, match="the MONAI bundle differs"):
        verify_bundle(root, version, images)


def test_export_without_a_registry_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MEDAI_HOME", str(home))
    monkeypatch.delenv("MEDAI_MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["models", "export", MODEL, "1", "--format", "onnx", "--out", str(out)]
    )
    get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "there is no MLflow database" in result.output and "Traceback" not in result.output
    assert list(home.iterdir()) == [] and not out.exists()
    bad = CliRunner().invoke(app, ["models", "export", MODEL, "1", "--format", "tar"])
    assert bad.exit_code == 2 and "--format must be one of bundle, onnx" in bad.output


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_registered_version_exports_to_both_formats(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_tiny_catalog(settings, tiny_synth(tmp_path / "synth"), "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(tiny_model_config(MODEL, epochs=1), encoding="utf-8")
    run = train_tracked(load_model_config(model_dir), settings, device="cpu")

    # The check images are the model's real test images, preprocessed as served.
    version = load_version(MODEL, run.model_version, settings)
    images = check_images(version.config, settings)
    assert images.source.startswith("8 test images of snapshot 'tiny'")
    assert images.batch.shape == (8, 1, 32, 32) and float(images.batch.std()) > 0.05

    runner = CliRunner()
    for fmt in ("bundle", "onnx"):
        out = tmp_path / f"export-{fmt}"
        result = runner.invoke(
            app, ["models", "export", MODEL, run.model_version, "--format", fmt, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert "max abs probability difference" in result.output
        assert "same outputs as the served model" in result.output
    assert (tmp_path / "export-bundle" / "configs" / "inference.json").is_file()
    assert (tmp_path / "export-bundle" / "models" / "model.pt").is_file()
    meta = json.loads((tmp_path / "export-bundle" / "configs" / "metadata.json").read_text())
    assert meta["medai"]["run_id"] == run.run_id
    assert all(isinstance(t, float) for t in meta["medai"]["thresholds"].values())
    onnx_path = tmp_path / "export-onnx" / ONNX_FILE
    got = _session_probabilities(onnx_path, images.batch.numpy())
    assert np.max(np.abs(got - _served(version, images.batch))) <= TOLERANCE

    # --json, and an existing folder is never overwritten.
    again = runner.invoke(
        app,
        ["models", "export", MODEL, run.model_version, "--format", "onnx",
         "--out", str(tmp_path / "export-onnx")],
    )  # fmt: skip
    assert again.exit_code == 2 and "exists and is not an empty folder" in again.output
    document = runner.invoke(
        app,
        ["models", "export", MODEL, run.model_version, "--format", "onnx",
         "--out", str(tmp_path / "json-onnx"), "--json"],
    )  # fmt: skip
    assert document.exit_code == 0, document.output
    report = json.loads(document.stdout)
    assert report["format"] == "onnx" and report["files"] == [ONNX_FILE]
    assert report["max_abs_difference"] <= TOLERANCE and report["images"] == 8

    # A broken export is never kept: the check fails and nothing is left at --out.
    real = export._write_onnx

    def corrupting(version: RegisteredVersion, path: Path, images: object) -> None:
        real(version, path, images)  # type: ignore[arg-type]
        model = onnx.load(str(path))
        last = model.graph.initializer[-1]
        values = numpy_helper.to_array(last) + 1.0
        last.CopyFrom(numpy_helper.from_array(values, last.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export, "_write_onnx", corrupting)
    broken = tmp_path / "broken"
    with pytest.raises(ExportFailed):
        export_model(MODEL, run.model_version, "onnx", broken, settings)
    assert not broken.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".broken")] == []


def test_onnx_export_of_a_volume_network(tmp_path: Path) -> None:
    """A 3-D model (a CT series as one volume): the same export, a 5-D input."""
    version = _version(_config("resnet18", size=(8, 16, 16)))
    images = check_images(version.config, Settings(home=tmp_path / "home"), limit=1)
    path = tmp_path / ONNX_FILE
    export._write_onnx(version, path, images)  # from one volume: repeated to a batch of 2
    assert verify_onnx(path, version, images) <= TOLERANCE
    batch = torch.rand(3, 1, 8, 16, 16)
    got = _session_probabilities(path, batch.numpy())
    assert np.max(np.abs(got - _served(version, batch))) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_ct_volume_model_exports_checked_on_its_test_series(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 3-D pilot's path: a `_target_` network on series-level volumes, exported and
    checked on its real test series (read, resampled and resized as served)."""
    from tests.utils.ct_research import build_ct_catalog, tiny_ct_config, tiny_ct_synth

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_ct_catalog(settings, tiny_ct_synth(tmp_path / "synth"))
    model_dir = tmp_path / "models" / "ct-export"
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(tiny_ct_config("ct-export", epochs=1), "utf-8")
    run = train_tracked(load_model_config(model_dir), settings, device="cpu")

    version = load_version("ct-export", run.model_version, settings)
    images = check_images(version.config, settings, limit=4)
    assert images.source.startswith("test images of snapshot 'ct-tiny'", 2)
    assert images.batch.shape[1:] == (1, 8, 24, 24) and images.modalities == ("CT",)
    for fmt in ("bundle", "onnx"):
        result = export_model("ct-export", run.model_version, fmt, tmp_path / fmt, settings)
        assert result.max_abs_difference <= TOLERANCE
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [8, 24, 24]
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "CT"
    inference = json.loads((tmp_path / "bundle" / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == "monai.networks.nets.ResNet"
    assert inference["network_def"]["spatial_dims"] == 3
