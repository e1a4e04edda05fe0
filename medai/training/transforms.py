"""MONAI transform chains built from a small, validated configuration.

A chain takes a data dictionary whose image is a channel-first float array in [0, 1]
(what :class:`medai.training.reader.LoadDicomFromStore` gives) to a float32 tensor of
``(C, *image_size)``. Training chains add random augmentation; evaluation chains are
deterministic. Seeding goes through :func:`seed_everything` (global generators) and
:func:`seed_transforms` (each random transform's own generator), so one seed fixes the
augmented output of a run.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.compose import Compose
from monai.transforms.intensity.dictionary import NormalizeIntensityd, ScaleIntensityd
from monai.transforms.spatial.dictionary import RandFlipd, RandRotated, RandZoomd, Resized
from monai.transforms.transform import MapTransform
from monai.transforms.utility.dictionary import EnsureChannelFirstd, EnsureTyped
from monai.utils.misc import set_determinism
from pydantic import BaseModel, ConfigDict, Field

from medai.training.targets import TRAIN_ONLY_KEY, build_transform

__all__ = [
    "AugmentConfig",
    "TransformConfig",
    "build_transforms",
    "seed_everything",
    "seed_transforms",
]


class AugmentConfig(BaseModel):
    """Train-time augmentation; each transform fires with its probability.

    On volumes (``[D, H, W]``) the rotation turns each axial slice (about the first
    spatial axis) and the zoom is isotropic.

    Flipping is off by default: a chest radiograph has a handedness (the heart on the
    patient's left, situs inversus is a finding, side markers are read), so a mirrored
    film is not a plausible input. Turn ``flip_prob`` on for anatomy that is symmetric.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rotate_degrees: float = Field(default=10.0, ge=0.0, le=180.0)
    rotate_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    zoom_min: float = Field(default=0.9, gt=0.0)
    zoom_max: float = Field(default=1.1, gt=0.0)
    zoom_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    flip_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    flip_axis: int = Field(
        default=1, ge=0, description="spatial axis to flip (1: left-right in 2-D, 2 in 3-D)"
    )


class TransformConfig(BaseModel):
    """Input transforms of a model (the ``[transforms]`` table of its config).

    Attributes
    ----------
    image_size
        Spatial size the image is resized to, e.g. ``[224, 224]``; three values
        ``[D, H, W]`` for the volumes of a series-level model (``[data] level = "series"``),
        whose networks are then built with ``spatial_dims=3``.
    spacing_mm
        Volumes only: the voxel spacing ``[z, y, x]`` in mm a series is resampled to
        when read (before the resize to ``image_size``); ``None`` keeps the series' own.
    intensity
        ``"scale"``: min-max to [0, 1] per image; ``"normalize"``: zero mean, unit
        standard deviation per image; ``"none"``: keep the reader's [0, 1] display values.
    augment
        Train-time augmentation; ``None`` for none.
    extra
        ``[[transforms.extra]]``: MONAI dictionary transforms as bundle-style ``_target_``
        entries (:mod:`medai.training.targets`), applied after medai's augmentation, in
        order, in training only unless an entry says ``_train_only_ = false`` (then also
        at evaluation and in the service). ``keys`` defaults to the image.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: tuple[int, ...] = Field(default=(224, 224), min_length=2, max_length=3)
    spacing_mm: tuple[float, float, float] | None = None
    intensity: Literal["scale", "normalize", "none"] = "scale"
    augment: AugmentConfig | None = AugmentConfig()
    extra: tuple[dict[str, Any], ...] = ()


def build_transforms(
    config: TransformConfig,
    *,
    train: bool,
    keys: Sequence[str] = ("image",),
    loader: MapTransform | None = None,
    seed: int | None = None,
) -> Compose:
    """Build the chain for training (``train=True``, with augmentation) or evaluation.

    Parameters
    ----------
    config
        The transform configuration.
    train
        Add the random augmentation of ``config.augment``.
    keys
        Dictionary keys of the images.
    loader
        A first transform that loads the images (e.g. ``LoadDicomFromStore``); without
        one, the images must already be channel-first arrays.
    seed
        Seed the chain's random transforms (see :func:`seed_transforms`).

    Returns
    -------
    monai.transforms.Compose
    """
    key_list = list(keys)
    size = tuple(config.image_size)
    steps: list[MapTransform] = [] if loader is None else [loader]
    evaluation_extras = [s for s in config.extra if not s.get(TRAIN_ONLY_KEY, True)]
    if not train and config.intensity != "normalize" and not evaluation_extras:
        # The same numbers as the MONAI steps below, without their per-call overhead.
        steps.append(_ResizeScaled(key_list, size, scale=config.intensity == "scale"))
        return Compose(steps)
    # The reader's arrays are already channel-first; saying so (channel_dim=0) instead of
    # letting MONAI guess from metadata keeps a one-row image from being misread.
    steps.append(EnsureChannelFirstd(key_list, channel_dim=0))
    # Area interpolation when shrinking averages pixels instead of aliasing fine lines.
    steps.append(Resized(key_list, spatial_size=size, mode="area"))
    if config.intensity == "scale":
        steps.append(ScaleIntensityd(key_list, minv=0.0, maxv=1.0))
    elif config.intensity == "normalize":
        steps.append(NormalizeIntensityd(key_list, channel_wise=True))
    aug = config.augment
    if train and aug is not None:
        if aug.rotate_prob > 0 and aug.rotate_degrees > 0:
            radians = aug.rotate_degrees * torch.pi / 180.0
            steps.append(
                RandRotated(
                    key_list,
                    range_x=radians,
                    prob=aug.rotate_prob,
                    keep_size=True,
                    padding_mode="zeros",
                )
            )
        if aug.zoom_prob > 0 and (aug.zoom_min, aug.zoom_max) != (1.0, 1.0):
            steps.append(
                RandZoomd(
                    key_list,
                    prob=aug.zoom_prob,
                    min_zoom=aug.zoom_min,
                    max_zoom=aug.zoom_max,
                    keep_size=True,
                    padding_mode="constant",
                )
            )
        if aug.flip_prob > 0:
            # MONAI counts spatial axes from 0, after the channel axis.
            steps.append(RandFlipd(key_list, prob=aug.flip_prob, spatial_axis=aug.flip_axis))
    for spec in config.extra:  # checked when the configuration was validated
        if train or not spec.get(TRAIN_ONLY_KEY, True):
            steps.append(build_transform(spec, keys=key_list, image_size=size))
    # Plain float32 tensors: metadata tracking is not needed after loading and would
    # make every batch carry (and collate) a metadata dictionary.
    steps.append(EnsureTyped(key_list, data_type="tensor", dtype=torch.float32, track_meta=False))
    chain = Compose(steps)
    if seed is not None:
        seed_transforms(chain, seed)
    return chain


class _ResizeScaled(MapTransform):
    """The evaluation chain in plain torch: ``Resized(mode="area")``, ``ScaleIntensityd``.

    What :func:`build_transforms` builds for evaluation (and so for the service) when it
    has no step but these: EnsureChannelFirstd (channel_dim=0), Resized, ScaleIntensityd
    to [0, 1] (or none) and EnsureTyped to a float32 tensor. The same operations MONAI
    runs, in its order and in float32, so the same numbers, at a fraction of the cost
    (MONAI wraps each step in metadata bookkeeping that evaluation then drops).
    """

    def __init__(self, keys: Sequence[str], size: tuple[int, ...], *, scale: bool) -> None:
        super().__init__(keys)
        self.size = size
        self.scale = scale

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(np.asarray(d[key]), dtype=torch.float32)
            if tuple(image.shape[1:]) != self.size:  # MONAI leaves an image of that size as is
                image = F.interpolate(image.unsqueeze(0), size=self.size, mode="area")[0]
            if self.scale:
                image = _scale_to_unit(image)
            d[key] = image.contiguous()
        return d


def _scale_to_unit(image: torch.Tensor) -> torch.Tensor:
    """``monai.transforms.utils.rescale_array(image, 0.0, 1.0)``, step for step."""
    low, high = image.min(), image.max()
    if low == high:
        return image * 0.0
    return ((image - low) / (high - low)) * (1.0 - 0.0) + 0.0


def seed_transforms(chain: Compose, seed: int) -> Compose:
    """Give each random transform of ``chain`` its own generator, derived from ``seed``.

    Parameters
    ----------
    chain
        The transform chain.
    seed
        The seed; the same seed gives the same sequence of augmentations.

    Returns
    -------
    monai.transforms.Compose
        ``chain`` itself.
    """
    chain.set_random_state(seed=seed)
    return chain


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators and ask for deterministic kernels.

    Wraps :func:`monai.utils.set_determinism`, which also sets cuDNN to deterministic
    mode. Data-loader workers re-seed their transforms from this state (MONAI's
    ``DataLoader`` does so per worker).

    Parameters
    ----------
    seed
        The seed.
    """
    set_determinism(seed=seed)
