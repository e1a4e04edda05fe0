"""Network factory: a classification network by name, optionally initialised from a local file.

Names
-----
``densenet121``
    :class:`monai.networks.nets.DenseNet121`.
``resnet18``, ``resnet34``, ``resnet50``
    MONAI's ResNet (:mod:`monai.networks.nets.resnet`), with the ImageNet stem (7x7
    convolution, stride 2) instead of MONAI's default stride 1, which would quadruple
    the cost of every later layer on a 2-D radiograph.
``torchvision_resnet18``, ``torchvision_resnet50``
    torchvision's ResNet with its first convolution taking ``in_channels`` and its last
    layer giving ``num_labels`` outputs.

Any other network is given in the configuration as a MONAI bundle-style ``_target_`` entry
(:mod:`medai.training.targets`). :func:`network_from_config` builds either kind from a
model configuration: training and the inference service both call it, so whatever trained
is rebuilt the same way from the run's logged configuration.

Every network returns logits of shape ``(N, num_labels)``: apply a sigmoid for the
per-label probabilities of a multi-label finding model.

Weights are never downloaded. ``weights`` names a local file holding a state dict
(``torch.save(model.state_dict(), path)``, or a checkpoint dictionary with a
``state_dict`` / ``model_state_dict`` entry). With ``backbone_only=True`` the file may
come from a network with another head (e.g. a torchvision ImageNet checkpoint): its
classification layer is ignored, and a first convolution made for 3 channels is summed
over its input channels to take 1 (the usual adaptation of RGB weights to grey images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import torch
import torchvision.models
from monai.networks.nets.densenet import DenseNet121
from monai.networks.nets.resnet import resnet18, resnet34, resnet50
from torch import nn

from medai.errors import WeightsError
from medai.training.targets import build_network_target

__all__ = ["NETWORKS", "build_network", "load_weights", "network_from_config"]


def _densenet121(spatial_dims: int, in_channels: int, num_labels: int) -> nn.Module:
    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_labels)


def _monai_resnet(depth: int) -> Callable[[int, int, int], nn.Module]:
    factory = {18: resnet18, 34: resnet34, 50: resnet50}[depth]

    def build(spatial_dims: int, in_channels: int, num_labels: int) -> nn.Module:
        model: nn.Module = factory(
            pretrained=False,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_labels,
            conv1_t_size=7,
            conv1_t_stride=2,
        )
        return model

    return build


def _torchvision_resnet(depth: int) -> Callable[[int, int, int], nn.Module]:
    factory = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]

    def build(spatial_dims: int, in_channels: int, num_labels: int) -> nn.Module:
        if spatial_dims != 2:
            raise ValueError("torchvision networks are 2-D only (spatial_dims=2)")
        model: Any = factory(weights=None)  # weights=None: never a download
        stem = model.conv1
        model.conv1 = nn.Conv2d(
            in_channels,
            stem.out_channels,
            kernel_size=stem.kernel_size,
            stride=stem.stride,
            padding=stem.padding,
            bias=False,
        )
        model.fc = nn.Linear(model.fc.in_features, num_labels)
        built: nn.Module = model
        return built

    return build


NETWORKS: Final[dict[str, Callable[[int, int, int], nn.Module]]] = {
    "densenet121": _densenet121,
    "resnet18": _monai_resnet(18),
    "resnet34": _monai_resnet(34),
    "resnet50": _monai_resnet(50),
    "torchvision_resnet18": _torchvision_resnet(18),
    "torchvision_resnet50": _torchvision_resnet(50),
}

# Parameter-name prefixes of each family's classification layer and first convolution.
_HEADS: Final = ("fc.", "class_layers.out.")
_STEMS: Final = ("conv1.weight", "features.conv0.weight")


def build_network(
    name: str,
    *,
    num_labels: int,
    in_channels: int = 1,
    spatial_dims: int = 2,
    weights: str | Path | None = None,
    backbone_only: bool = False,
) -> nn.Module:
    """Build the network ``name`` (see the module docstring), optionally loading weights.

    Parameters
    ----------
    name
        One of :data:`NETWORKS`.
    num_labels
        Number of outputs (one logit per label).
    in_channels
        Image channels (1 for grey images).
    spatial_dims
        2 for images; MONAI networks also take 3 for volumes.
    weights
        A local state-dict file, or None for a random initialisation.
    backbone_only
        See :func:`load_weights`.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        An unknown name or bad sizes.
    WeightsError
        The weights file is missing or does not fit.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    if num_labels < 1 or in_channels < 1:
        raise ValueError("num_labels and in_channels must be at least 1")
    model = NETWORKS[name](spatial_dims, in_channels, num_labels)
    if weights is not None:
        load_weights(model, weights, backbone_only=backbone_only)
    return model


class _NetworkSection(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def target(self) -> dict[str, Any] | None: ...
    @property
    def backbone_only(self) -> bool: ...


class _Transforms(Protocol):
    @property
    def image_size(self) -> Sequence[int]: ...


class NetworkSource(Protocol):
    """What :func:`network_from_config` reads of a :class:`~medai.training.config.ModelConfig`."""

    @property
    def network(self) -> _NetworkSection: ...
    @property
    def transforms(self) -> _Transforms: ...
    def weights_path(self) -> Path | None: ...


def network_from_config(
    config: NetworkSource, num_labels: int, *, initial_weights: bool = True
) -> nn.Module:
    """The network of a model configuration: its ``[network]`` name or ``_target_`` entry.

    One input channel; ``spatial_dims`` is the number of ``transforms.image_size`` values.

    Parameters
    ----------
    config
        A :class:`medai.training.config.ModelConfig` (as trained, or as logged by a run).
    num_labels
        Number of outputs.
    initial_weights
        Load ``[network] weights`` (the file training starts from); False to leave the
        initialisation for weights loaded afterwards (the service, a resumed run).

    Raises
    ------
    ValueError
        An unknown name or bad sizes (a ``TargetError`` for a bad ``_target_`` entry).
    WeightsError
        The weights file is missing or does not fit.
    """
    section = config.network
    size = tuple(config.transforms.image_size)
    weights = config.weights_path() if initial_weights else None
    if section.target is None:
        return build_network(
            section.name,
            num_labels=num_labels,
            in_channels=1,
            spatial_dims=len(size),
            weights=weights,
            backbone_only=section.backbone_only,
        )
    if num_labels < 1:
        raise ValueError("num_labels must be at least 1")
    model = build_network_target(section.target, num_labels=num_labels, image_size=size)
    if weights is not None:
        load_weights(model, weights, backbone_only=section.backbone_only)
    return model


def load_weights(model: nn.Module, path: str | Path, *, backbone_only: bool = False) -> None:
    """Load a local state-dict file into ``model`` (in place).

    Parameters
    ----------
    model
        The network.
    path
        The file (read with ``torch.load(..., weights_only=True)``: no code runs).
    backbone_only
        Ignore the file's classification layer, keeping the model's fresh one, and sum a
        3-channel first convolution to fit a 1-channel model. Otherwise every parameter
        must be present with the model's shape.

    Raises
    ------
    WeightsError
        The file is missing or unreadable, or its parameters do not fit the model (the
        message names the first few that do not).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"weights file not found: {file} (weights are never downloaded)")
    try:
        loaded: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        raise WeightsError(f"cannot read weights file {file}: {error}") from error
    state = _state_dict_of(loaded, file)
    own = model.state_dict()
    if backbone_only:
        state = {k: v for k, v in state.items() if not k.startswith(_HEADS)}
        for stem in _STEMS:
            if stem in state and stem in own:
                state[stem] = _adapt_stem(state[stem], own[stem])
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (backbone_only and k.startswith(_HEADS))]
    problems = (
        [f"shape {m}" for m in mismatched]
        + [f"unexpected {k}" for k in unexpected]
        + [f"missing {k}" for k in missing]
    )
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError(f"weights file {file} does not fit the network: {shown}{more}")
    model.load_state_dict(state, strict=not backbone_only)


def _state_dict_of(loaded: Any, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model_state_dict"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"weights file {file} does not hold a state dict of tensors")
    # A model saved from DistributedDataParallel prefixes every name with "module.".
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _adapt_stem(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A 3-channel first convolution summed over its input channels for a 1-channel model."""
    if weight.dim() >= 3 and weight.shape[1] == 3 and target.shape[1] == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight
