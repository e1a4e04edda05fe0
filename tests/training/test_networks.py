"""Network factory: every name builds and runs; weights load only from local files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medai.errors import WeightsError
from medai.training.networks import NETWORKS, build_network


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    model = build_network(name, num_labels=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert tuple(out.shape) == (2, 3)


def test_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_network("torchvision_resnet18", num_labels=2)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = build_network("torchvision_resnet18", num_labels=2, weights=path).eval()
    source.eval()
    batch = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), source(batch))
    # A checkpoint dictionary (and DDP's "module." prefix) is accepted too.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pt")
    again = build_network("torchvision_resnet18", num_labels=2, weights=tmp_path / "checkpoint.pt")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(batch), source(batch))


def test_missing_file_and_mismatch(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        build_network("resnet18", num_labels=2, weights=tmp_path / "absent.pt")
    path = tmp_path / "five.pt"
    torch.save(build_network("torchvision_resnet18", num_labels=5).state_dict(), path)
    with pytest.raises(WeightsError, match=r"shape fc\.weight"):
        build_network("torchvision_resnet18", num_labels=2, weights=path)
    with pytest.raises(WeightsError, match="unexpected|missing"):
        build_network("resnet18", num_labels=5, weights=path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build_network("resnet18", num_labels=2, weights=tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="unknown network"):
        build_network("vgg", num_labels=2)


def test_backbone_only_adapts_an_rgb_checkpoint(tmp_path: Path) -> None:
    # A torchvision ImageNet-shaped checkpoint (3 channels, 1000 classes), made locally.
    import torchvision.models

    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "imagenet_like.pt"
    torch.save(rgb.state_dict(), path)
    model = build_network("torchvision_resnet18", num_labels=4, weights=path, backbone_only=True)
    conv1 = model.conv1
    assert isinstance(conv1, nn.Conv2d)
    torch.testing.assert_close(conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    with pytest.raises(WeightsError):
        build_network("torchvision_resnet18", num_labels=4, weights=path)
