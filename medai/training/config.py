"""A model's training configuration: ``models/<name>/config.toml``, validated.

The file names everything a run depends on besides the code: the registered model name,
the dataset snapshot and its labels, input transforms, network, optimiser, schedule,
seed, dataset caching, and how the model is evaluated and gated for promotion::

    name = "chest-xray-triage"      # the MLflow registered model (and experiment) name
    seed = 0

    [data]
    snapshot = "chest-xray-triage"  # made by `medai snapshot create`
    labels = ["nodule", "effusion", "cardiomegaly"]
    cache = "memory"                # "none" | "memory" | "disk"

    [transforms]                    # medai.training.transforms.TransformConfig
    image_size = [128, 128]

    [network]
    name = "resnet18"               # medai.training.networks.NETWORKS
    # weights = "weights/resnet18.pt"   (relative to the model directory)

    [optimizer]
    lr = 1e-3
    weight_decay = 1e-4

    [schedule]
    epochs = 20
    batch_size = 32
    patience = 5
    lr_schedule = "cosine"

    [evaluation]
    n_bootstrap = 2000
    threshold = "youden"
    min_auroc_ci_low = 0.7          # promotion gate, per label

Errors name the file and each bad field, as the campaign's
``load_campaign`` does
(``models/x/config.toml: schedule.epochs: Input should be greater than or equal to 1``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from medai.errors import ModelConfigError
from medai.tomlfile import format_validation_errors, read_toml
from medai.training.networks import NETWORKS
from medai.training.transforms import TransformConfig

__all__ = [
    "CONFIG_FILE",
    "DataConfig",
    "EvaluationConfig",
    "ModelConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "apply_overrides",
    "flatten",
    "load_model_config",
]

CONFIG_FILE = "config.toml"
# MLflow registered model names are free text; keep them to what is safe in a URI
# (models:/<name>@alias) and a directory name.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Snapshot names as medai.snapshots.query.validate_name allows; finding codes as column names.
_SNAPSHOT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_FINDING = re.compile(r"[a-z0-9][a-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Which snapshot and labels to train on, and how to cache the decoded images.

    Attributes
    ----------
    snapshot
        Name of the dataset snapshot (``medai snapshot create``).
    labels
        Finding columns of the manifest, in the order of the network's outputs.
    cache
        ``"none"``: decode every image every epoch; ``"memory"``: MONAI ``CacheDataset``
        (the deterministic transforms' output held in RAM); ``"disk"``: MONAI
        ``PersistentDataset`` under ``$MEDAI_HOME/cache``.
    num_workers
        Data-loader worker processes (threads with ``cache="memory"``); 0 loads in the
        training process.
    """

    snapshot: str
    labels: tuple[str, ...] = Field(min_length=1)
    cache: Literal["none", "memory", "disk"] = "memory"
    num_workers: int = Field(default=0, ge=0)

    @field_validator("snapshot")
    @classmethod
    def _snapshot_name(cls, value: str) -> str:
        if not _SNAPSHOT_NAME.fullmatch(value):
            raise ValueError(
                "snapshot names are lower-case letters, digits, '-' and '_' (64 at most)"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [label for label in value if not _FINDING.fullmatch(label)]
        if bad:
            raise ValueError(f"labels are finding codes (lower-case, digits, '_'): {bad}")
        if len(set(value)) != len(value):
            raise ValueError("labels must be distinct")
        return value


class NetworkConfig(_Strict):
    """The network (:func:`medai.training.networks.build_network`).

    Attributes
    ----------
    name
        One of :data:`medai.training.networks.NETWORKS`.
    weights
        A local state-dict file to start from, relative to the model directory; None for
        a random initialisation.
    backbone_only
        Ignore the weights' classification layer (see
        :func:`medai.training.networks.load_weights`).
    """

    name: str = "resnet18"
    weights: Path | None = None
    backbone_only: bool = False

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in NETWORKS:
            raise ValueError(f"unknown network {value!r}; known: {', '.join(sorted(NETWORKS))}")
        return value


class OptimizerConfig(_Strict):
    """AdamW."""

    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)


class ScheduleConfig(_Strict):
    """Epochs, batches, early stopping and the learning-rate schedule.

    Attributes
    ----------
    epochs
        Most epochs to train.
    batch_size
        Training batch size (evaluation uses the same).
    patience
        Stop after this many epochs without a better validation AUROC; 0 never stops early.
    lr_schedule
        ``"cosine"``: cosine annealing to 0 over ``epochs``; ``"none"``: constant.
    """

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=32, ge=1)
    patience: int = Field(default=5, ge=0)
    lr_schedule: Literal["cosine", "none"] = "cosine"


class EvaluationConfig(_Strict):
    """How the best model is evaluated (:func:`medai.training.evaluation.evaluate`) and gated.

    Attributes
    ----------
    n_bootstrap, confidence
        Bootstrap resamples and coverage of the AUROC confidence intervals.
    threshold, target_sensitivity
        How each label's operating threshold is chosen on the validation set.
    min_auroc_ci_low
        Promotion gate: the lower confidence bound of the test AUROC must reach this for
        every label before a version may become ``champion``.
    """

    n_bootstrap: int = Field(default=2000, ge=10)
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    threshold: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = Field(default=0.9, gt=0.0, le=1.0)
    min_auroc_ci_low: float = Field(default=0.7, ge=0.0, le=1.0)


class ModelConfig(_Strict):
    """A model's training configuration (``models/<name>/config.toml``)."""

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    data: DataConfig
    transforms: TransformConfig = TransformConfig()
    network: NetworkConfig = NetworkConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not _MODEL_NAME.fullmatch(value):
            raise ValueError("model names are letters, digits, '.', '-' and '_' (100 at most)")
        return value

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from, if any."""
        return self._source

    @property
    def directory(self) -> Path | None:
        """The model directory (the file's folder), against which relative paths resolve."""
        return None if self._source is None else self._source.parent

    def weights_path(self) -> Path | None:
        """The network's weights file, resolved against the model directory."""
        weights = self.network.weights
        if weights is None:
            return None
        weights = weights.expanduser()
        if weights.is_absolute() or self.directory is None:
            return weights
        return self.directory / weights


def flatten(config: BaseModel) -> dict[str, str]:
    """The configuration as ``{"schedule.epochs": "20", ...}`` (for ``mlflow.log_params``)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list | tuple):
            out[prefix] = ",".join(str(item) for item in value)
        else:
            out[prefix] = "" if value is None else str(value)

    walk("", config.model_dump(mode="json"))
    return out


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate a model configuration.

    Parameters
    ----------
    path
        The TOML file, or the model directory holding ``config.toml``.

    Returns
    -------
    ModelConfig
        With :attr:`ModelConfig.source` set to the file.

    Raises
    ------
    ModelConfigError
        If the file cannot be read, is not TOML, or a field is missing, unknown or invalid;
        the message names the file and each bad field.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / CONFIG_FILE
    data = read_toml(file, error=ModelConfigError, missing="no such model configuration")
    try:
        config = ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(format_validation_errors(str(file), exc)) from None
    config._source = file.absolute()
    return config


def apply_overrides(config: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    """``config`` with ``overrides`` merged in, validated again, from the same file.

    Parameters
    ----------
    config
        The configuration to start from.
    overrides
        Nested like the file, e.g. ``{"schedule": {"epochs": 5}}``; a table merges into
        the table of the same name, any other value replaces it.

    Raises
    ------
    ModelConfigError
        When the merged configuration is invalid; the message names the field.
    """

    def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    source = str(config.source or "the configuration")
    try:
        merged = ModelConfig.model_validate(merge(config.model_dump(), overrides))
    except ValidationError as exc:
        raise ModelConfigError(format_validation_errors(source + " (overridden)", exc)) from None
    merged._source = config.source
    return merged
