"""Transform chains: shapes, types, ranges and seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms.compose import Compose
from monai.transforms.intensity.dictionary import ScaleIntensityd
from monai.transforms.spatial.dictionary import Resized
from monai.transforms.transform import MapTransform
from monai.transforms.utility.dictionary import EnsureChannelFirstd, EnsureTyped
from pydantic import ValidationError

from medai.training.transforms import (
    AugmentConfig,
    TransformConfig,
    build_transforms,
    seed_everything,
    seed_transforms,
)


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((1, 48, 40), dtype=np.float32)
    image[0, 10:30, 5:20] = 1.0  # an asymmetric block, so a flip or rotation shows
    return image + rng.random(image.shape, dtype=np.float32) * 0.1


@pytest.mark.parametrize("intensity", ["scale", "normalize", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_shape_dtype_range(intensity: str, train: bool) -> None:
    config = TransformConfig(image_size=(32, 32), intensity=intensity)  # type: ignore[arg-type]
    out = build_transforms(config, train=train, seed=0)({"image": _image(), "label": 1})
    image = out["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, 32, 32)
    assert out["label"] == 1  # other keys pass through
    if intensity == "scale":
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    if intensity == "normalize" and not train:
        assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1.0) < 0.05


def _augmented(seed: int, n: int = 4) -> list[torch.Tensor]:
    config = TransformConfig(
        image_size=(32, 32), augment=AugmentConfig(rotate_prob=1.0, zoom_prob=1.0)
    )
    chain = build_transforms(config, train=True, seed=seed)
    return [chain({"image": _image()})["image"] for _ in range(n)]


def test_same_seed_same_augmentation_different_seed_differs() -> None:
    first, again, other = _augmented(7), _augmented(7), _augmented(8)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(first, other, strict=True))
    # Successive calls of one chain draw new augmentations.
    assert not torch.allclose(first[0], first[1])


def test_reseeding_a_chain_replays_it() -> None:
    config = TransformConfig(image_size=(32, 32), augment=AugmentConfig(rotate_prob=1.0))
    chain = build_transforms(config, train=True)
    seed_transforms(chain, 3)
    a = chain({"image": _image()})["image"]
    seed_transforms(chain, 3)
    torch.testing.assert_close(chain({"image": _image()})["image"], a)
    seed_everything(3)  # global generators; must not raise on CPU


def test_evaluation_chain_is_deterministic_and_flip_is_opt_in() -> None:
    config = TransformConfig(image_size=(32, 32))
    assert config.augment is not None and config.augment.flip_prob == 0.0
    names = [type(t).__name__ for t in build_transforms(config, train=True).transforms]
    assert "RandFlipd" not in names and "RandRotated" in names
    names = [type(t).__name__ for t in build_transforms(config, train=False).transforms]
    assert not [n for n in names if n.startswith("Rand")]
    flipping = TransformConfig(image_size=(32, 32), augment=AugmentConfig(flip_prob=0.5))
    assert "RandFlipd" in [
        type(t).__name__ for t in build_transforms(flipping, train=True).transforms
    ]
    with pytest.raises(ValidationError):
        AugmentConfig(flip_prob=2.0)


def _monai_evaluation_chain(size: tuple[int, ...], intensity: str) -> Compose:
    """The evaluation chain as MONAI's own transforms (what build_transforms built before)."""
    steps: list[MapTransform] = [
        EnsureChannelFirstd(["image"], channel_dim=0),
        Resized(["image"], spatial_size=size, mode="area"),
    ]
    if intensity == "scale":
        steps.append(ScaleIntensityd(["image"], minv=0.0, maxv=1.0))
    steps.append(EnsureTyped(["image"], data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(steps)


@pytest.mark.parametrize("intensity", ["scale", "none"])
@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 512, 512), (128, 128)),
        ((1, 48, 40), (32, 32)),  # shrinking by a factor that is not whole
        ((1, 20, 30), (40, 50)),  # enlarging
        ((1, 32, 32), (32, 32)),  # already the size
        ((1, 12, 40, 36), (6, 16, 16)),  # a volume
        ((3, 24, 24), (16, 16)),  # three channels
    ],
)
def test_evaluation_chain_gives_monai_numbers(
    intensity: str, shape: tuple[int, ...], size: tuple[int, ...]
) -> None:
    image = np.random.default_rng(3).random(shape, dtype=np.float32) * 0.7 + 0.1
    config = TransformConfig(image_size=size, intensity=intensity)  # type: ignore[arg-type]
    out = build_transforms(config, train=False)({"image": image})["image"]
    expected = _monai_evaluation_chain(size, intensity)({"image": image})["image"]
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    assert out.shape == expected.shape == (shape[0], *size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_evaluation_chain_of_a_constant_image_is_black() -> None:
    image = np.full((1, 20, 20), 0.4, np.float32)
    out = build_transforms(TransformConfig(image_size=(8, 8)), train=False)({"image": image})
    expected = _monai_evaluation_chain((8, 8), "scale")({"image": image})["image"]
    torch.testing.assert_close(out["image"], expected, rtol=0, atol=0)
