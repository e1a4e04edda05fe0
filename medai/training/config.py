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
    # or any MONAI network by its full path (medai.training.targets), e.g.
    # _target_ = "monai.networks.nets.DenseNet121"
    # spatial_dims = "@spatial_dims"
    # in_channels = "@in_channels"
    # out_channels = "@num_labels"

    [optimizer]                     # AdamW; or _target_ = "torch.optim.SGD" and its arguments
    lr = 1e-3
    weight_decay = 1e-4

    [loss]                          # masked binary cross-entropy; or an elementwise
    name = "masked_bce"             # _target_ = "monai.losses.FocalLoss" ...

    [schedule]
    epochs = 20
    batch_size = 32
    patience = 5
    lr_schedule = "cosine"

    [evaluation]
    n_bootstrap = 2000
    threshold = "youden"
    min_auroc_ci_low = 0.7          # promotion gate, per label

    [export]
    int8 = false                    # an int8 ONNX model for the service, checked at training

Errors name the file and each bad field, as the campaign's
``load_campaign`` does
(``models/x/config.toml: schedule.epochs: Input should be greater than or equal to 1``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medai.errors import ModelConfigError
from medai.tomlfile import format_validation_errors, read_toml
from medai.training import targets
from medai.training.networks import NETWORKS
from medai.training.transforms import TransformConfig

__all__ = [
    "CONFIG_FILE",
    "DataConfig",
    "EvaluationConfig",
    "ExportConfig",
    "LossConfig",
    "ModelConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "apply_overrides",
    "flatten",
    "load_model_config",
    "parse_overrides",
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
    level
        ``"instance"``: one 2-D image per manifest row; ``"series"``: one volume per row
        of a series-level snapshot (``medai snapshot create --level series``), its slices
        stacked in order (:class:`medai.training.volume_reader.LoadSeriesFromStore`), with
        a 3-D ``transforms.image_size`` ``[D, H, W]``.
    """

    snapshot: str
    labels: tuple[str, ...] = Field(min_length=1)
    cache: Literal["none", "memory", "disk"] = "memory"
    num_workers: int = Field(default=0, ge=0)
    level: Literal["instance", "series"] = "instance"

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


class _TargetSection(_Strict):
    """A section that may be a MONAI bundle-style ``_target_`` entry instead of a name.

    ``target`` holds the entry as written (``_target_`` and its arguments, see
    :mod:`medai.training.targets`); the section's own fields (``_OWN``) stay beside it.
    Dumped, the section has its file's shape again (``{"_target_": ..., "lr": ...}``), so
    the logged configuration reads and reloads like the file.
    """

    _OWN: ClassVar[tuple[str, ...]] = ()
    _NAMED: ClassVar[tuple[str, ...]] = ("name",)

    target: dict[str, Any] | None = None

    @field_validator("target")
    @classmethod
    def _has_target(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not isinstance(value.get(targets.TARGET_KEY), str):
            raise ValueError("a target table needs _target_ (a full dotted path)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or targets.TARGET_KEY not in data:
            return data
        named = [key for key in cls._NAMED if key in data]
        if named:
            raise PydanticCustomError(
                "target",
                "{message}",
                {"field": named[0], "message": "give either name or _target_, not both"},
            )
        return targets.split_target(data, cls._OWN)

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        target = data.pop("target", None)
        if target is None:
            return data
        return {**target, **{key: data[key] for key in self._OWN if key in data}}

    @property
    def title(self) -> str:
        """What the section builds: the ``_target_`` path, or the name."""
        if self.target is not None:
            return str(self.target[targets.TARGET_KEY])
        return str(getattr(self, "name", ""))


class NetworkConfig(_TargetSection):
    """The network (:func:`medai.training.networks.network_from_config`).

    Attributes
    ----------
    name
        One of :data:`medai.training.networks.NETWORKS` (when there is no ``_target_``).
    target
        A MONAI bundle-style entry (``_target_ = "monai.networks.nets.X"`` and its
        arguments, with ``"@spatial_dims"``, ``"@in_channels"``, ``"@num_labels"``,
        ``"@image_size"`` filled by medai): any network that maps ``(N, 1, *image_size)``
        to ``(N, num_labels)`` logits.
    weights
        A local state-dict file to start from, relative to the model directory; None for
        a random initialisation.
    backbone_only
        Ignore the weights' classification layer (see
        :func:`medai.training.networks.load_weights`).
    """

    _OWN: ClassVar[tuple[str, ...]] = ("weights", "backbone_only")

    name: str = "resnet18"
    weights: Path | None = None
    backbone_only: bool = False

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in NETWORKS:
            raise ValueError(f"unknown network {value!r}; known: {', '.join(sorted(NETWORKS))}")
        return value


class OptimizerConfig(_TargetSection):
    """AdamW (``lr``, ``weight_decay``), or a ``_target_`` optimiser and its arguments.

    With ``_target_`` (``torch.optim.*`` or ``monai.optimizers.*``) every other key is an
    argument; medai passes the network's parameters.
    """

    name: Literal["adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)


class LossConfig(_TargetSection):
    """The training loss.

    ``name = "masked_bce"`` (the default): binary cross-entropy on logits, averaged over
    the known labels. A ``_target_`` loss (``monai.losses.*`` or ``torch.nn.*``) is called
    elementwise (medai passes ``reduction="none"``) on the logits and the targets with
    unknown labels set to 0; medai masks the unknown labels and averages over the known
    ones, as for the default. The validation loss (``val/loss``, which early stopping
    watches when no label has a validation AUROC) stays the masked binary cross-entropy,
    comparable across runs.
    """

    name: Literal["masked_bce"] = "masked_bce"


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
    precision
        The training steps' arithmetic (:mod:`medai.training.precision`): ``"auto"``
        (float16 on CUDA, bfloat16 on a CPU with native bfloat16 units for 2-D images of
        128 x 128 or more, else float32),
        ``"bfloat16"`` or ``"float32"``. Evaluation and export are float32 always.
    """

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=32, ge=1)
    patience: int = Field(default=5, ge=0)
    lr_schedule: Literal["cosine", "none"] = "cosine"
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


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


class ExportConfig(_Strict):
    """What training makes for the inference service besides the weights.

    Attributes
    ----------
    int8
        Quantize the trained network to an int8 ONNX model
        (:mod:`medai.training.quantize`: static, per channel, calibrated on validation
        images) and keep it only if it agrees with the network on the test split (every
        probability within 0.01, every label's test AUROC within 0.005). Accepted, it is
        logged as ``serving/model-int8.onnx``, which the service checks again at load and
        runs on a CPU when it is the fastest (``inference_backend = "auto"`` or
        ``"int8"``). 2-D instance-level models only (``data.level = "instance"``). A
        refusal or a failure of the quantizer never fails the training: the run's tag
        ``medai.int8`` says why.
    bfloat16
        Check the trained network's bfloat16 forward pass (:mod:`medai.training.bfloat16`:
        autocast, channels-last) against its float32 one on the test split, with the same
        bounds; the run's tag ``medai.bfloat16`` says ``accepted`` or why not. Accepted, the
        service may run it on a CPU with native bfloat16 units, where it is 2-3 times
        faster (``inference_backend = "auto"`` or ``"bfloat16"``). Nothing else is stored.
    """

    int8: bool = False
    bfloat16: bool = False


class ModelConfig(_Strict):
    """A model's training configuration (``models/<name>/config.toml``)."""

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    data: DataConfig
    transforms: TransformConfig = TransformConfig()
    network: NetworkConfig = NetworkConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    loss: LossConfig = LossConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()

    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _dimensions(self) -> ModelConfig:
        dims = len(self.transforms.image_size)
        if self.data.level == "series" and dims != 3:
            raise ValueError(
                "data.level 'series' trains on volumes: transforms.image_size needs 3 values "
                f"[D, H, W], not {dims}"
            )
        if self.data.level == "instance" and dims != 2:
            raise ValueError(
                "data.level 'instance' trains on 2-D images: transforms.image_size needs 2 "
                f"values [H, W], not {dims} (set data.level = 'series' for volumes)"
            )
        if self.transforms.spacing_mm is not None and self.data.level != "series":
            raise ValueError("transforms.spacing_mm resamples volumes: set data.level = 'series'")
        if self.export.int8 and self.data.level != "instance":
            raise ValueError(
                "export.int8 quantizes 2-D instance-level models only: set it false for "
                "data.level 'series'"
            )
        return self

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not _MODEL_NAME.fullmatch(value):
            raise ValueError("model names are letters, digits, '.', '-' and '_' (100 at most)")
        return value

    @model_validator(mode="after")
    def _targets_build(self) -> ModelConfig:
        """Build every ``_target_`` entry once: a bad one fails here, not mid-training."""
        num_labels, size = len(self.data.labels), tuple(self.transforms.image_size)
        checks: list[tuple[str, Callable[[], None]]] = []
        network, optimizer, loss = self.network.target, self.optimizer.target, self.loss.target
        if network is not None:
            checks.append(
                (
                    "network",
                    lambda: targets.check_network(network, num_labels=num_labels, image_size=size),
                )
            )
        if optimizer is not None:
            checks.append(("optimizer", lambda: targets.check_optimizer(optimizer)))
        if loss is not None:
            checks.append(("loss", lambda: targets.check_loss(loss, num_labels=num_labels)))
        extra = self.transforms.extra
        if extra:
            checks.append(
                (
                    "transforms.extra",
                    lambda: targets.check_transforms(extra, image_size=size, keys=("image",)),
                )
            )
        for section, check in checks:
            try:
                check()
            except targets.TargetError as exc:
                field = exc.field
                where = section + field if field.startswith("[") else f"{section}.{field}"
                raise PydanticCustomError(
                    "target", "{message}", {"field": where.rstrip("."), "message": exc.message}
                ) from None
        return self

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
        elif isinstance(value, list | tuple) and any(isinstance(i, dict) for i in value):
            for index, item in enumerate(value):  # [[transforms.extra]]: one key per entry
                walk(f"{prefix}.{index}", item)
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

    base = config.model_dump()
    # Another network, optimiser or loss (a new _target_ or name) starts from its own
    # arguments, not the previous one's: only the section's own fields carry over.
    sections: dict[str, type[_TargetSection]] = {
        "network": NetworkConfig,
        "optimizer": OptimizerConfig,
        "loss": LossConfig,
    }
    for section, model in sections.items():
        extra, current = overrides.get(section), base.get(section)
        if not isinstance(extra, Mapping) or not isinstance(current, dict):
            continue
        switched = [
            key
            for key in (targets.TARGET_KEY, "name")
            if key in extra and extra[key] != current.get(key)
        ]
        if switched:
            base[section] = {k: v for k, v in current.items() if k in model._OWN}
    source = str(config.source or "the configuration")
    try:
        merged = ModelConfig.model_validate(merge(base, overrides))
    except ValidationError as exc:
        raise ModelConfigError(format_validation_errors(source + " (overridden)", exc)) from None
    merged._source = config.source
    return merged


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``medai train --set KEY=VALUE`` options as the nested table :func:`apply_overrides` takes.

    ``KEY`` is dotted (``schedule.epochs``, ``network._target_``); ``VALUE`` is a TOML value
    (``5``, ``1e-3``, ``true``, ``[64, 64]``, ``"text"``), or, when it is not valid TOML
    and does not open an array, table or quoted string, the text itself
    (``network.name=resnet34``, ``optimizer._target_=torch.optim.SGD``).

    Raises
    ------
    ModelConfigError
        An option without ``=``, an empty key part, or a key both set and used as a table.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or any(not part.strip() for part in parts):
            raise ModelConfigError(
                f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. schedule.epochs=5"
            )
        value = _toml_value(text.strip(), item)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part.strip(), {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ModelConfigError(f"--set {item!r}: {where} is set to a value, not a table")
            node = child
        node[parts[-1].strip()] = value
    return out


def _toml_value(text: str, item: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as exc:
        if text[:1] in ("[", "{", '"', "'"):
            raise ModelConfigError(f"--set {item!r}: the value is not valid TOML ({exc})") from None
        return text
