"""Grad-CAM overlays: a decodable PNG of the expected size, maps where the evidence is, and
the network handed back exactly as it was lent."""

from __future__ import annotations

import io
import threading

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from torch import nn

from medai.serving.inference.heatmap import (
    CAPTION_HEIGHT,
    PANEL_SIZE,
    default_target_layer,
    gradcam_overlay_png,
)
from medai.training.networks import build_network

LABELS = ("nodule", "effusion", "cardiomegaly")
SIZE = 32


def _decode(png: bytes) -> npt.NDArray[np.int16]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image, dtype=np.int16)


def _radiograph() -> torch.Tensor:
    """A 32 px image in [0, 1]: a smooth gradient with a bright disc (something to look at)."""
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = ((x - 10) ** 2 + (y - 12) ** 2 < 36).float()
    noise = 0.05 * torch.rand(SIZE, SIZE, generator=generator)
    return (0.2 + 0.3 * y / SIZE + 0.5 * disc + noise).clamp(0, 1).unsqueeze(0)


def _network(name: str) -> nn.Module:
    torch.manual_seed(0)
    network = build_network(name, num_labels=len(LABELS)).eval()
    # Non-negative head weights on non-negative pooled features make every label's evidence
    # positive, so its Grad-CAM map is not all zero (a random head may give zero maps).
    head = network.get_submodule("class_layers.out" if name == "densenet121" else "fc")
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.weight.abs_()
    return network


def _hooks(network: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
        for m in network.modules()
    )


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet18", "layer4"),
        ("densenet121", "class_layers.relu"),
        ("torchvision_resnet18", "layer4"),
    ],
)
def test_overlay_png_and_the_network_is_unchanged(name: str, layer: str) -> None:
    network = _network(name)
    assert default_target_layer(network) == layer
    before = {k: v.clone() for k, v in network.state_dict().items()}
    inplace = {n: m.inplace for n, m in network.named_modules() if isinstance(m, nn.ReLU)}

    # Prediction code holds inference_mode (and its tensors are inference tensors): the
    # overlay must still get its gradients.
    with torch.inference_mode():
        image = _radiograph()
        png = gradcam_overlay_png(network, image, [0, 2], LABELS)
    plain = _decode(gradcam_overlay_png(network, image, [], LABELS))
    overlay = _decode(png)

    assert overlay.shape == (PANEL_SIZE + CAPTION_HEIGHT, 2 * PANEL_SIZE, 3)
    assert plain.shape == (PANEL_SIZE + CAPTION_HEIGHT, PANEL_SIZE, 3)
    for panel in (0, 1):
        tile = overlay[:PANEL_SIZE, panel * PANEL_SIZE : (panel + 1) * PANEL_SIZE]
        assert np.abs(tile - plain[:PANEL_SIZE]).max() > 20  # a map is drawn over it
    # The plain image is grey: the colour of the overlay comes from the map alone.
    grey = plain[:PANEL_SIZE]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()

    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in network.parameters())
    assert all(p.requires_grad for p in network.parameters())
    assert not any(m.training for m in network.modules())
    assert _hooks(network) == 0
    assert {n: m.inplace for n, m in network.named_modules() if isinstance(m, nn.ReLU)} == inplace


class _Probe(nn.Module):
    """Feature map = the image itself (1x1 identity convolution), both logits = its mean.

    Its Grad-CAM map is therefore the image, scaled to its maximum: known in advance.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.head.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_the_map_lies_where_the_evidence_is() -> None:
    probe = _Probe().eval()
    assert default_target_layer(probe) == "conv"  # no known block: the last convolution
    image = torch.zeros(1, SIZE, SIZE)
    image[:, :8, :8] = 1.0  # evidence in the top-left corner only
    overlay = _decode(gradcam_overlay_png(probe, image, [1], ["finding-b", "finding-a"]))
    plain = _decode(gradcam_overlay_png(probe, image, [], ["finding-b", "finding-a"]))

    scale = PANEL_SIZE // SIZE
    inside = overlay[2 * scale : 6 * scale, 2 * scale : 6 * scale]
    outside = slice(12 * scale, PANEL_SIZE)
    # Jet at the map's maximum is dark red, blended over the white square.
    assert (inside[..., 0] > inside[..., 2] + 40).all()
    assert np.array_equal(overlay[outside, outside], plain[outside, outside])
    # Only the first label's evidence is positive for a negated head: its map is empty.
    with torch.no_grad():
        probe.head.weight[0].fill_(-1.0)
    negative = _decode(gradcam_overlay_png(probe, image, [0], ["finding-b", "finding-a"]))
    assert np.array_equal(negative[:PANEL_SIZE], plain[:PANEL_SIZE])


def test_captions_name_each_label_and_empty_means_no_finding() -> None:
    probe = _Probe().eval()
    image = torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = ["finding-b", "finding-a"]
    one = _decode(gradcam_overlay_png(probe, image, [0], labels))
    other = _decode(gradcam_overlay_png(probe, image, [1], labels))
    plain = _decode(gradcam_overlay_png(probe, image, [], labels))
    # Same network output for both labels: only the caption tells them apart, and it does.
    assert np.array_equal(one[:PANEL_SIZE], other[:PANEL_SIZE])
    assert not np.array_equal(one[PANEL_SIZE:], other[PANEL_SIZE:])
    assert not np.array_equal(one[PANEL_SIZE:], plain[PANEL_SIZE:])
    assert one[PANEL_SIZE:].max() > 200  # white text on the black band


def test_explicit_layer_wrong_sizes_and_indices() -> None:
    network = _network("resnet18")
    image = _radiograph()
    png = gradcam_overlay_png(network, image, [1], LABELS, target_layer="layer3", panel_size=64)
    assert _decode(png).shape == (64 + CAPTION_HEIGHT, 64, 3)
    wide = gradcam_overlay_png(network, torch.rand(1, 16, 32), [], LABELS, panel_size=64)
    assert _decode(wide).shape == (32 + CAPTION_HEIGHT, 64, 3)
    with pytest.raises(ValueError, match="no module named"):
        gradcam_overlay_png(network, image, [0], LABELS, target_layer="layer9")
    with pytest.raises(ValueError, match="outside"):
        gradcam_overlay_png(network, image, [3], LABELS)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        gradcam_overlay_png(network, image[0], [0], LABELS)
    assert _hooks(network) == 0  # nor do failed calls leave hooks behind


def test_a_prediction_in_another_thread_meanwhile_is_ignored_and_unaffected() -> None:
    network = _network("resnet18")
    # 128 px: layer4 keeps a 4x4 map, so activations of another batch would show.
    image = torch.nn.functional.interpolate(_radiograph()[None], size=128)[0]
    batch = torch.rand(4, 1, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = network(batch)
    reference = gradcam_overlay_png(network, image, [0, 2], LABELS)
    outputs: list[torch.Tensor] = []

    def predict() -> None:
        with torch.inference_mode():
            outputs.append(network(batch))

    def interleave(_module: nn.Module, _inputs: object, _output: object) -> None:
        # Grad mode is per thread: this fires in the Grad-CAM's forward only, after layer4
        # recorded its activation, and runs a whole prediction in another thread right then.
        if torch.is_grad_enabled():
            worker = threading.Thread(target=predict)
            worker.start()
            worker.join()

    handle = network.get_submodule("fc").register_forward_hook(interleave)
    try:
        png = gradcam_overlay_png(network, image, [0, 2], LABELS)
    finally:
        handle.remove()
    assert len(outputs) == 2  # one prediction during each label's Grad-CAM
    assert png == reference
    assert all(torch.allclose(output, expected, atol=1e-5) for output in outputs)
