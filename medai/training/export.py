"""A registered model version exported to the ecosystem: a MONAI bundle, or ONNX.

Both start from what the service loads (:mod:`medai.serving.inference.model`): the
version's training run, its resolved configuration (``config/resolved.json``) and its
weights (``weights/best.pt``, a state dict read with ``weights_only=True``); the network
is rebuilt from the configuration as serving rebuilds it (:func:`rebuild_network`).

``bundle``
    MONAI's bundle layout: ``configs/metadata.json`` (the input and output description in
    ``network_data_format``, the labels and their operating thresholds, where the weights
    came from), ``configs/inference.json`` (``network_def`` as a MONAI ``_target_`` where
    the network is MONAI's own, the evaluation preprocessing as MONAI dictionary
    transforms, a sigmoid as postprocessing, and ``initialize`` loading the weights),
    ``models/model.pt`` (the state dict) and ``docs/README.md``.
``onnx``
    ``model.onnx``: the network followed by its sigmoid, ``image`` ``(batch, 1, *image_size)``
    float32 in, ``probabilities`` ``(batch, labels)`` out, the batch axis dynamic
    (``torch.onnx.export`` with ``dynamo=True``); the labels, thresholds and provenance in
    the model's ``metadata_props``.

Each export is checked before it is kept: images from the model's test split (read from
the store and preprocessed as serving does; random images at the model's size when the
snapshot is not in this catalog) go through the served network and through the export
(MONAI's :class:`~monai.bundle.ConfigParser` rebuilding the bundle from its own files, or
onnxruntime on the CPU). The largest absolute difference of a probability must be at most
:data:`TOLERANCE`, or :class:`~medai.errors.ExportFailed` is raised and nothing is left
at the destination.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from medai.config import Settings, get_settings
from medai.errors import CampaignNotSetUp, ExportFailed, ModelUnavailable, SnapshotNotFound
from medai.training.config import ModelConfig
from medai.training.networks import network_from_config
from medai.training.onnx_graph import INPUT, OUTPUT, cpu_session, export_probabilities
from medai.training.targets import TRAIN_ONLY_KEY, network_target_filled
from medai.training.tracking import (
    THRESHOLD_METRIC,
    WEIGHTS_ARTIFACT,
    load_run_model,
)

__all__ = [
    "BUNDLE_CHECKPOINT",
    "FORMATS",
    "ONNX_FILE",
    "TOLERANCE",
    "CheckImages",
    "ExportFormat",
    "ExportResult",
    "RegisteredVersion",
    "bundle_network_def",
    "check_images",
    "export_model",
    "load_version",
    "rebuild_network",
    "verify_bundle",
    "verify_onnx",
    "write_onnx",
]

ExportFormat = Literal["bundle", "onnx"]
FORMATS: Final[tuple[ExportFormat, ...]] = ("bundle", "onnx")
TOLERANCE: Final = 1e-4
ONNX_FILE: Final = "model.onnx"
BUNDLE_CHECKPOINT: Final = "models/model.pt"
CHECK_IMAGES: Final = 8
# MONAI's ResNets as medai's named shortcuts build them (medai.training.networks).
_MONAI_RESNETS: Final = {"resnet18", "resnet34", "resnet50"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RegisteredVersion:
    """What an export needs of a registered version: as the service would load it.

    Attributes
    ----------
    name, version, run_id
        The registered model, its version and its training run.
    config
        The run's resolved configuration.
    thresholds
        Each label's operating threshold (``val/threshold/<label>``), NaN where none.
    state
        The network's weights (a state dict).
    """

    name: str
    version: str
    run_id: str
    config: ModelConfig
    thresholds: tuple[float, ...]
    state: dict[str, torch.Tensor] = field(repr=False)

    @property
    def labels(self) -> tuple[str, ...]:
        """The findings, in the order of the network's outputs."""
        return tuple(self.config.data.labels)

    @property
    def image_size(self) -> tuple[int, ...]:
        """The network's input size, without batch and channel."""
        return tuple(self.config.transforms.image_size)

    def network(self) -> nn.Module:
        """The network rebuilt from the configuration with the weights, in eval mode, on CPU."""
        network = rebuild_network(self.config)
        network.load_state_dict(self.state)
        return network.eval()


@dataclass(frozen=True)
class CheckImages:
    """The images an export is checked on.

    Attributes
    ----------
    raw
        The images as the reader gives them (channel-first float arrays), before the
        evaluation transforms.
    batch
        The same images after serving's evaluation transforms, ``(N, 1, *image_size)``.
    source
        Where they come from, in words (no patient data: the snapshot's name and a count).
    modalities
        The snapshot's modalities (empty without a snapshot).
    """

    raw: list[npt.NDArray[np.float32]]
    batch: torch.Tensor
    source: str
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportResult:
    """One export, checked."""

    name: str
    version: str
    run_id: str
    format: ExportFormat
    path: Path
    files: tuple[str, ...]
    images: int
    source: str
    max_abs_difference: float
    tolerance: float = TOLERANCE


def rebuild_network(config: ModelConfig) -> nn.Module:
    """The untrained network of ``config``, as training built it and serving rebuilds it
    (:func:`medai.training.networks.network_from_config`, without the initial weights file:
    the trained weights are loaded over it)."""
    return network_from_config(config, len(config.data.labels), initial_weights=False)


def _client(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    uri = settings.resolved_mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ModelUnavailable(
            f"there is no MLflow database at {uri.removeprefix('sqlite:///')}: train a model "
            "first (`medai train MODEL_DIR`), or set MEDAI_MLFLOW_TRACKING_URI"
        )
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """Without MLflow's download progress bars (the command shows its own progress)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def load_version(name: str, version: str, settings: Settings | None = None) -> RegisteredVersion:
    """Load version ``version`` of the registered model ``name`` (config, weights, thresholds).

    Raises
    ------
    ModelUnavailable
        No such version, or its run lacks the configuration or the weights, or the weights
        do not fit the configured network.
    """
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    client = _client(settings)
    what = f"{name} version {version}"
    try:
        registered = client.get_model_version(name, str(version))
    except MlflowException:
        raise ModelUnavailable(
            f"no version {version} of a model {name!r} is registered: check the name and "
            "version (the MLflow UI lists them), or train one with `medai train MODEL_DIR`"
        ) from None
    run_id = str(registered.run_id or "")
    if not run_id:
        raise ModelUnavailable(f"{what} has no training run: it was not registered by medai")
    with _quiet_downloads():
        config, state = load_run_model(run_id, what, settings)
    metrics = client.get_run(run_id).data.metrics
    thresholds = tuple(
        float(metrics.get(THRESHOLD_METRIC.format(label=label), math.nan))
        for label in config.data.labels
    )
    loaded = RegisteredVersion(name, str(registered.version), run_id, config, thresholds, state)
    try:
        loaded.network()
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelUnavailable(
            f"{what}: {WEIGHTS_ARTIFACT} does not fit the configured network ({type(exc).__name__})"
        ) from None
    return loaded


def check_images(
    config: ModelConfig, settings: Settings | None = None, limit: int = CHECK_IMAGES
) -> CheckImages:
    """Up to ``limit`` images of the model's test split, raw and preprocessed as served.

    When the model's snapshot is not in this catalog (another machine, a fresh home),
    ``limit`` random images at the model's size stand in for them, and ``source`` says so.
    """
    from medai.catalog.db import catalog_state
    from medai.snapshots import load_snapshot
    from medai.training.data import image_loader
    from medai.training.reader import records_from_manifest
    from medai.training.transforms import build_transforms

    settings = settings or get_settings()
    chain = build_transforms(config.transforms, train=False)
    snapshot = config.data.snapshot
    manifest = None
    # Only a set-up catalog is read: opening a missing SQLite file would create it.
    if catalog_state(settings.resolved_database_url) == "ready":
        try:
            manifest = load_snapshot(snapshot, settings=settings)
        except (SnapshotNotFound, CampaignNotSetUp):
            manifest = None
    raw: list[npt.NDArray[np.float32]]
    modalities: tuple[str, ...] = ()
    if manifest is None or not (manifest["split"] == "test").any():
        rng = np.random.default_rng(0)
        size = tuple(config.transforms.image_size)
        raw = [rng.random((1, *size), dtype=np.float32) for _ in range(limit)]
        source = f"{limit} random images of {size} (snapshot {snapshot!r} is not in this catalog)"
    else:
        rows = manifest[manifest["split"] == "test"].head(limit)
        records = records_from_manifest(rows, config.data.labels)
        loader = image_loader(config, settings)  # a volume per row for a series-level model
        raw = [
            np.asarray(loader({"image": record["image"]})["image"], dtype=np.float32)
            for record in records
        ]
        source = f"{len(raw)} test images of snapshot {snapshot!r}"
        modalities = tuple(sorted({str(m) for m in manifest["modality"].dropna()}))
    batch = torch.stack([chain({"image": image})["image"] for image in raw]).float()
    return CheckImages(raw, batch, source, modalities)


def _served_probabilities(version: RegisteredVersion, batch: torch.Tensor) -> npt.NDArray[Any]:
    """What the service answers for ``batch``: the sigmoid of the rebuilt network's logits."""
    with torch.inference_mode():
        logits = version.network()(batch)
    probabilities: npt.NDArray[Any] = torch.sigmoid(logits.float()).numpy().astype(np.float64)
    return probabilities


def _compare(what: str, served: npt.NDArray[Any], exported: npt.NDArray[Any]) -> float:
    if served.shape != exported.shape:
        raise ExportFailed(
            f"{what} gives probabilities of shape {exported.shape}, the served model "
            f"{served.shape}: the export is broken; do not use it"
        )
    difference = float(np.max(np.abs(served - exported.astype(np.float64))))
    if not difference <= TOLERANCE:  # NaN fails too
        raise ExportFailed(
            f"{what} differs from the served model by up to {difference:.3g} in probability "
            f"(tolerance {TOLERANCE:g}): the export is broken; do not use it"
        )
    return difference


# -- MONAI bundle -------------------------------------------------------------------------


def bundle_network_def(config: ModelConfig) -> dict[str, Any]:
    """The bundle's ``network_def``: a MONAI ``_target_`` where the network is MONAI's.

    A network configured by ``_target_`` keeps it; medai's MONAI shortcuts (``densenet121``,
    ``resnet18/34/50``) are written as the MONAI call they stand for; any other network
    (torchvision's) is rebuilt by medai itself (``medai.training.export.bundle_network``
    from the bundle's ``configs/medai_config.json``), so the bundle then needs medai.
    """
    if config.network.target is not None:
        return network_target_filled(
            config.network.target,
            num_labels=len(config.data.labels),
            image_size=config.transforms.image_size,
        )
    name = config.network.name
    dims = len(config.transforms.image_size)
    labels = len(config.data.labels)
    if name == "densenet121":
        return {
            "_target_": "monai.networks.nets.DenseNet121",
            "spatial_dims": dims,
            "in_channels": 1,
            "out_channels": labels,
        }
    if name in _MONAI_RESNETS:
        return {
            "_target_": f"monai.networks.nets.{name}",
            "pretrained": False,
            "spatial_dims": dims,
            "n_input_channels": 1,
            "num_classes": labels,
            "conv1_t_size": 7,
            "conv1_t_stride": 2,
        }
    return {
        "_target_": "medai.training.export.bundle_network",
        "config_file": "$@bundle_root + '/configs/medai_config.json'",
    }


def bundle_network(config_file: str) -> nn.Module:
    """A bundle's network rebuilt by medai from its resolved configuration (untrained)."""
    config = ModelConfig.model_validate(json.loads(Path(config_file).read_text("utf-8")))
    return rebuild_network(config)


def _preprocessing(config: ModelConfig) -> dict[str, Any]:
    """Serving's evaluation transforms (:func:`build_transforms`, ``train=False``) as MONAI
    dictionary transforms, from a decoded channel-first image in [0, 1]."""
    size = list(config.transforms.image_size)
    steps: list[dict[str, Any]] = [
        {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": 0},
        {"_target_": "Resized", "keys": "image", "spatial_size": size, "mode": "area"},
    ]
    if config.transforms.intensity == "scale":
        steps.append({"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0})
    elif config.transforms.intensity == "normalize":
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True})
    # The [[transforms.extra]] entries also applied at evaluation, as written: their "@"
    # references are ids of inference.json (_reference_values).
    for spec in _evaluation_extras(config):
        steps.append({"keys": "@keys", **{k: v for k, v in spec.items() if k != TRAIN_ONLY_KEY}})
    steps.append(
        {
            "_target_": "EnsureTyped",
            "keys": "image",
            "data_type": "tensor",
            "dtype": "$torch.float32",
            "track_meta": False,
        }
    )
    return {"_target_": "Compose", "transforms": steps}


def _evaluation_extras(config: ModelConfig) -> list[dict[str, Any]]:
    return [dict(s) for s in config.transforms.extra if not s.get(TRAIN_ONLY_KEY, True)]


def _reference_values(config: ModelConfig) -> dict[str, Any]:
    """The values medai gives a ``_target_`` entry's ``@`` references, as inference.json ids."""
    size = list(config.transforms.image_size)
    return {
        "keys": ["image"],
        "spatial_dims": len(size),
        "in_channels": 1,
        "num_labels": len(config.data.labels),
        "image_size": size,
    }


def _inference_config(config: ModelConfig) -> dict[str, Any]:
    references = _reference_values(config) if _evaluation_extras(config) else {}
    return {
        **references,
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": f"$@bundle_root + '/{BUNDLE_CHECKPOINT}'",
        "network_def": bundle_network_def(config),
        "network": "$@network_def.to(@device)",
        "preprocessing": _preprocessing(config),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}],
        },
        "initialize": [
            "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, "
            "weights_only=True))",
            "$@network.eval()",
        ],
    }


def _thresholds_json(version: RegisteredVersion) -> dict[str, float | None]:
    return {
        label: (None if math.isnan(t) else t)
        for label, t in zip(version.labels, version.thresholds, strict=True)
    }


def _metadata(version: RegisteredVersion, images: CheckImages) -> dict[str, Any]:
    import monai

    config = version.config
    labels = version.labels
    semver = f"{version.version}.0.0"
    uses_medai = bundle_network_def(config)["_target_"].startswith("medai.")
    return {
        "version": semver,
        "changelog": {semver: f"{version.name} version {version.version}, run {version.run_id}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"medai": _medai_version()} if uses_medai else {},
        "name": version.name,
        "task": f"Multi-label classification of {', '.join(labels)}",
        "description": config.description
        or f"{version.name}: one probability per finding from one image",
        "authors": "medai",
        "copyright": "",
        "data_source": f"medai snapshot {config.data.snapshot!r} (de-identified)",
        "data_type": "dicom",
        "image_classes": (
            "one channel, decoded by medai's reader (rescale slope/intercept, VOI window, "
            "MONOCHROME1 inverted) to [0, 1]"
        ),
        "label_classes": ", ".join(labels),
        "pred_classes": "one probability per finding: " + ", ".join(labels),
        "intended_use": "research; not for clinical use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "/".join(images.modalities) or "unknown",
                    "num_channels": 1,
                    "spatial_shape": list(version.image_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(labels),
                    "spatial_shape": [len(labels)],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_onehot": False,
                    "channel_def": {str(i): label for i, label in enumerate(labels)},
                }
            },
        },
        "medai": {
            "model": version.name,
            "version": version.version,
            "run_id": version.run_id,
            "labels": list(labels),
            "thresholds": _thresholds_json(version),
            "outputs": "logits from the network; probabilities after postprocessing (sigmoid)",
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "check": {"images": images.source, "tolerance": TOLERANCE},
        },
    }


def _medai_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("medai")
    except PackageNotFoundError:
        return "unknown"


def _readme(version: RegisteredVersion, images: CheckImages) -> str:
    thresholds = ", ".join(
        f"{label} {'-' if t is None else f'{t:.4f}'}"
        for label, t in _thresholds_json(version).items()
    )
    return f"""# {version.name} version {version.version}

Exported by `medai models export {version.name} {version.version} --format bundle` from the
MLflow run {version.run_id}. Research use only.

Input: one image, channel first, float32 in [0, 1] as medai's reader decodes a DICOM instance;
`preprocessing` resizes it to {list(version.image_size)}. Output: one probability per finding
({", ".join(version.labels)}), the sigmoid of the network's logits. Operating thresholds
(chosen on the validation split): {thresholds}.

```python
from monai.bundle import ConfigParser

parser = ConfigParser()
parser.read_config("configs/inference.json")
parser.read_meta("configs/metadata.json")
parser["bundle_root"] = "."
parser.get_parsed_content("initialize")  # loads models/model.pt
network = parser.get_parsed_content("network")
```

Checked at export on {images.source}: the largest difference from the served model's
probabilities was within {TOLERANCE:g}.
"""


def _write_bundle(version: RegisteredVersion, root: Path, images: CheckImages) -> None:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    config = version.config
    dump = json.dumps(_metadata(version, images), indent=2) + "\n"
    (root / "configs" / "metadata.json").write_text(dump, encoding="utf-8")
    inference = json.dumps(_inference_config(config), indent=2) + "\n"
    (root / "configs" / "inference.json").write_text(inference, encoding="utf-8")
    if bundle_network_def(config)["_target_"].startswith("medai."):
        resolved = config.model_dump_json(indent=2) + "\n"
        (root / "configs" / "medai_config.json").write_text(resolved, encoding="utf-8")
    torch.save(version.state, root / BUNDLE_CHECKPOINT)
    (root / "docs" / "README.md").write_text(_readme(version, images), encoding="utf-8")


def verify_bundle(root: Path, version: RegisteredVersion, images: CheckImages) -> float:
    """Rebuild the bundle at ``root`` with MONAI's tools and compare it with the served model.

    MONAI's :func:`~monai.bundle.verify_net_in_out` checks the network against the
    metadata's ``network_data_format``; :class:`~monai.bundle.ConfigParser` then runs the
    bundle's ``initialize`` (its weights), ``preprocessing``, ``network`` and
    ``postprocessing`` on the raw images.

    Returns
    -------
    float
        The largest absolute difference of a probability.

    Raises
    ------
    ExportFailed
        Above :data:`TOLERANCE`, or when the bundle does not load.
    """
    from monai.bundle.config_parser import ConfigParser
    from monai.bundle.scripts import verify_net_in_out

    inference = root / "configs" / "inference.json"
    metadata = root / "configs" / "metadata.json"
    # verify_net_in_out logs its arguments at INFO on MONAI's own handler: keep them quiet.
    scripts_logger = logging.getLogger("monai.bundle.scripts")
    level = scripts_logger.level
    scripts_logger.setLevel(logging.WARNING)
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(metadata),
            config_file=str(inference),
            device="cpu",
            bundle_root=str(root),
        )
        parser = ConfigParser()
        parser.read_config(str(inference))
        parser.read_meta(str(metadata))
        parser["bundle_root"] = str(root)
        parser["device"] = "$torch.device('cpu')"  # where the served model is compared
        parser.get_parsed_content("initialize")
        network = parser.get_parsed_content("network")
        preprocessing = parser.get_parsed_content("preprocessing")
        postprocessing = parser.get_parsed_content("postprocessing")
        batch = torch.stack([preprocessing({"image": image})["image"] for image in images.raw])
        with torch.inference_mode():
            logits = network(batch.float())
        probabilities = postprocessing({"pred": logits})["pred"]
    except (RuntimeError, KeyError, ValueError, OSError, AttributeError) as exc:
        raise ExportFailed(
            f"the MONAI bundle at {root} does not load with monai.bundle: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        scripts_logger.setLevel(level)
    exported = np.asarray(torch.as_tensor(probabilities).float().numpy())
    return _compare("the MONAI bundle", _served_probabilities(version, images.batch), exported)


# -- ONNX -----------------------------------------------------------------------------------


def _write_onnx(version: RegisteredVersion, path: Path, images: CheckImages) -> None:
    import onnx

    try:
        export_probabilities(version.network(), images.batch, path)
    except Exception as exc:  # torch.export and the ONNX translation raise many kinds
        raise ExportFailed(
            f"torch.onnx.export cannot export {version.config.network.title}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            "the MONAI bundle (--format bundle) keeps the network as torch"
        ) from None
    model = onnx.load(str(path))
    props = {
        "medai.model": version.name,
        "medai.version": version.version,
        "medai.run_id": version.run_id,
        "medai.labels": json.dumps(list(version.labels)),
        "medai.thresholds": json.dumps(_thresholds_json(version)),
        "medai.image_size": json.dumps(list(version.image_size)),
        "medai.input": "image: (batch, 1, *image_size) float32 in [0, 1], preprocessed as served",
        "medai.output": "probabilities: (batch, labels), the sigmoid of the logits",
    }
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_onnx(version: RegisteredVersion, path: Path, images: CheckImages) -> None:
    """Write ``model.onnx`` of ``version`` to ``path`` (as ``medai models export`` does),
    unchecked: the service compares it with its torch network itself at load
    (:mod:`medai.serving.inference.fast_path`). Raises :class:`ExportFailed`."""
    _write_onnx(version, path, images)


def verify_onnx(path: Path, version: RegisteredVersion, images: CheckImages) -> float:
    """Run the ONNX model at ``path`` with onnxruntime (CPU) and compare with the served model.

    Returns
    -------
    float
        The largest absolute difference of a probability.

    Raises
    ------
    ExportFailed
        Above :data:`TOLERANCE`, or when onnxruntime cannot run the file.
    """
    try:
        session = cpu_session(str(path))
        (exported,) = session.run([OUTPUT], {INPUT: images.batch.numpy()})
    except Exception as exc:  # onnxruntime raises its own, unexported, exception types
        raise ExportFailed(f"onnxruntime cannot run {path}: {type(exc).__name__}: {exc}") from None
    served = _served_probabilities(version, images.batch)
    return _compare("the ONNX model (onnxruntime, CPU)", served, np.asarray(exported))


# -- the command's work ---------------------------------------------------------------------


def _destination(out: Path) -> Path:
    out = out.expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def export_model(
    name: str,
    version: str,
    fmt: ExportFormat,
    out: Path,
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
    limit: int = CHECK_IMAGES,
) -> ExportResult:
    """Export version ``version`` of ``name`` as ``fmt`` into the folder ``out``, checked.

    The export is written beside ``out``, checked (see the module docstring), and only then
    moved to ``out``: a failed check leaves nothing behind.

    Raises
    ------
    ModelUnavailable
        No such version, or its artifacts are missing.
    ExportFailed
        The export does not give the served model's outputs.
    FileExistsError
        ``out`` is a non-empty folder or a file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    settings = settings or get_settings()
    step = progress or (lambda _text: None)
    destination = _destination(out)
    step(f"loading {name} version {version}")
    registered = load_version(name, version, settings)
    step("reading the check images")
    images = check_images(registered.config, settings, limit)
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        if fmt == "bundle":
            step("writing the MONAI bundle")
            _write_bundle(registered, work, images)
            step("checking the bundle with monai.bundle")
            difference = verify_bundle(work, registered, images)
        else:
            step("exporting to ONNX")
            _write_onnx(registered, work / ONNX_FILE, images)
            step("checking with onnxruntime")
            difference = verify_onnx(work / ONNX_FILE, registered, images)
        files = tuple(sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()))
        if destination.exists():
            destination.rmdir()  # empty, checked above
        work.rename(destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        name=name,
        version=registered.version,
        run_id=registered.run_id,
        format=fmt,
        path=destination,
        files=files,
        images=len(images.raw),
        source=images.source,
        max_abs_difference=difference,
    )
