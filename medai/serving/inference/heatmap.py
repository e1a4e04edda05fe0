"""Grad-CAM overlays (:class:`monai.visualize.GradCAM`) of a model's findings, as one PNG.

:func:`gradcam_overlay_png` draws the model input in grey with, for each requested label,
the Grad-CAM map of that label's logit laid over it in colour: one panel per label, side
by side, each captioned with the label and its probability. Without labels it draws the
plain image captioned "no positive finding".

A volume (the input of a series-level model, ``(C, D, H, W)``) gets a 3-D Grad-CAM map,
shown as a 2-D maximum-intensity projection along the slice axis (an axial MIP): the
image's maximum over the slices, and each map's maximum over the slices, laid over it. A
lesion brighter than the lung around it shows in the image's projection, and the map's
projection shows where (in the plane) the network looked, whatever slice it is on.

The target layer
----------------
Grad-CAM weighs the feature maps of one layer by the gradient of the label's logit. The
deepest layer that still has a spatial extent gives the most class-specific map (Selvaraju
et al. 2017), so by default :func:`default_target_layer` picks the last convolutional
block before global pooling:

``layer4``
    MONAI's ResNet and torchvision's ResNet: the last residual stage.
``class_layers.relu``
    MONAI's DenseNet121: its ``features`` end in a batch norm, and the rectified final
    feature map only exists at the ReLU that opens ``class_layers`` (MONAI's own example).
otherwise
    the last :class:`torch.nn.Conv1d`/``Conv2d``/``Conv3d`` in module order.

``target_layer=`` names another module (a name of ``network.named_modules()``).

The network is left as it was
-----------------------------
During a call the target module carries two hooks, the parameters' ``requires_grad`` is
switched off (only the gradient at the target layer is needed, not the weights'), and an
in-place activation at the target layer is made out-of-place (full backward hooks refuse
in-place outputs). All of it is undone before the call returns, successful or not; any
``.grad`` the parameters held is restored, and the network stays in eval mode.

Threads
-------
Calls are serialised by a module-wide lock: one Grad-CAM at a time, since two would share
the hooked module. Predictions that other threads run on the same network meanwhile (under
``torch.no_grad`` or ``torch.inference_mode``, as the batcher does) are unaffected: the
forward hook only records tensors of the thread holding the lock, and they build no graph
for the backward hook to fire on.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import torch
from monai.visualize.class_activation_maps import GradCAM, ModelWithHooks
from monai.visualize.visualizer import default_upsampler
from PIL import Image, ImageDraw, ImageFont
from torch import nn

__all__ = [
    "CAPTION_HEIGHT",
    "NO_FINDING_CAPTION",
    "PANEL_SIZE",
    "default_target_layer",
    "gradcam_overlay_png",
]

PANEL_SIZE: Final = 256
"""Pixels of the longer side of each panel (the model input is scaled up to it)."""
CAPTION_HEIGHT: Final = 28
"""Pixels of the caption band under the panels."""
NO_FINDING_CAPTION: Final = "no positive finding"
OVERLAY_ALPHA: Final = 0.5
"""Opacity of the colour where the map is at its maximum (it fades to 0 where the map is 0)."""

# Tried in order before falling back to the last convolution (see the module docstring).
_KNOWN_TARGETS: Final = ("layer4", "class_layers.relu")
# The "jet" colour map that Grad-CAM figures use: blue (low) -> cyan -> yellow -> red (high).
_JET_STOPS: Final = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_JET_RGB: Final = np.array(
    [[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]], dtype=np.float64
)
_LOCK = threading.Lock()

FloatArray = npt.NDArray[np.float64]


def default_target_layer(network: nn.Module) -> str:
    """The name of the module whose feature maps Grad-CAM uses (see the module docstring).

    Parameters
    ----------
    network
        A network of :mod:`medai.training.networks`, or any network with a convolution.

    Returns
    -------
    str
        A name of ``network.named_modules()``.

    Raises
    ------
    ValueError
        The network has neither a known block nor a convolution.
    """
    modules = dict(network.named_modules())
    for name in _KNOWN_TARGETS:
        if name in modules:
            return name
    convolutions: list[str] = [
        name
        for name, module in modules.items()
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    if not convolutions:
        raise ValueError("the network has no convolution to compute Grad-CAM on")
    return convolutions[-1]


def gradcam_overlay_png(
    network: nn.Module,
    image: torch.Tensor,
    label_indices: Sequence[int],
    labels: Sequence[str],
    *,
    target_layer: str | None = None,
    panel_size: int = PANEL_SIZE,
) -> bytes:
    """Render the Grad-CAM map of each requested label over the image, as PNG bytes.

    Parameters
    ----------
    network
        The classification network, returning logits of shape ``(N, len(labels))`` (a
        sigmoid per label gives its probability). Left unchanged (see the module docstring).
    image
        The preprocessed model input of one instance, channel first: ``(C, H, W)``,
        normally ``(1, H, W)`` float32 in [0, 1]; on any device (it is moved to the
        network's). It is shown min-max scaled, the mean of its channels. A volume
        ``(C, D, H, W)`` is shown as its maximum-intensity projection over ``D``, with the
        3-D maps projected the same way.
    label_indices
        The outputs to draw, one panel each, in this order (usually the positive
        findings). Empty: the plain image captioned :data:`NO_FINDING_CAPTION`.
    labels
        The model's label names, one per output: ``labels[i]`` captions output ``i``.
    target_layer
        The module Grad-CAM uses; :func:`default_target_layer` when None.
    panel_size
        Pixels of the longer side of each panel.

    Returns
    -------
    bytes
        A PNG, RGB, ``max(1, len(label_indices)) * W'`` wide and ``H' + CAPTION_HEIGHT``
        high, where ``W' x H'`` is the image scaled so that its longer side is
        ``panel_size``.

    Raises
    ------
    ValueError
        The image is not ``(C, H, W)``, an index is outside ``labels``, or the target layer
        does not exist.
    """
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (C, D, H, W), got shape {tuple(image.shape)}")
    bad = [index for index in label_indices if not 0 <= index < len(labels)]
    if bad:
        raise ValueError(f"label indices {bad} outside the {len(labels)} labels")
    if panel_size < 8:
        raise ValueError("panel_size must be at least 8 pixels")
    # A volume is shown as its maximum-intensity projection over the slices (axis 1).
    grey = _display(image.amax(dim=1) if image.dim() == 4 else image)
    if not label_indices:
        return _render(grey, [(NO_FINDING_CAPTION, None)], panel_size)
    layer = target_layer or default_target_layer(network)
    if layer not in dict(network.named_modules()):
        raise ValueError(f"the network has no module named {layer!r}")
    with _LOCK:
        maps = _gradcam_maps(network, image, label_indices, layer)
    panels = [
        (f"{labels[index]} (p = {probability:.2f})", cam.max(axis=0) if cam.ndim == 3 else cam)
        for index, (cam, probability) in zip(label_indices, maps, strict=True)
    ]
    return _render(grey, panels, panel_size)


class _OwnThreadHooks(ModelWithHooks):
    """MONAI's hooked model, with removable hooks; activations of the calling thread only."""

    def __init__(self, network: nn.Module, layer: str) -> None:
        # The parent registers its hooks without keeping the handles: let it set up its
        # state with no hooks, then register them here, where they can be removed.
        super().__init__(network, layer, register_forward=False, register_backward=False)
        self.register_forward = True
        self.register_backward = True
        self._owner = threading.get_ident()
        module = self.get_layer(layer)
        self.handles = [
            module.register_forward_hook(self._record_activation(layer)),
            module.register_full_backward_hook(self._record_gradient(layer)),
        ]

    def _record_activation(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if threading.get_ident() == self._owner:
                self.activations[name] = output

        return hook

    def _record_gradient(self, name: str) -> Callable[..., None]:
        # No thread check: only a graph built with gradients enabled reaches this hook, and
        # the batcher predicts without; on a GPU, autograd runs it on its own device thread.
        def hook(_module: nn.Module, _grad_input: Any, grad_output: Any) -> None:
            self.gradients[name] = grad_output[0]

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def _borrowed(network: nn.Module, layer: str) -> Iterator[_OwnThreadHooks]:
    """The network hooked for Grad-CAM, put back as it was on exit."""
    parameters = list(network.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in parameters]
    module = dict(network.named_modules())[layer]
    inplace = module.__dict__.get("inplace")
    was_training = network.training
    hooks: _OwnThreadHooks | None = None
    try:
        for parameter in parameters:
            parameter.requires_grad_(False)
        if inplace:
            module.__dict__["inplace"] = False
        hooks = _OwnThreadHooks(network, layer)
        yield hooks
    finally:
        if hooks is not None:
            hooks.remove()
        if inplace is not None:
            module.__dict__["inplace"] = inplace
        for parameter, requires_grad, grad in saved:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        network.train(was_training)


def _unit_max(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map by its maximum (0 stays 0; an all-zero map stays zero)."""
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / peak.view(-1, *([1] * (cam.dim() - 1)))


def _gradcam_maps(
    network: nn.Module, image: torch.Tensor, label_indices: Sequence[int], layer: str
) -> list[tuple[FloatArray, float]]:
    """Each label's map in [0, 1] at the image's size, and its probability."""
    device = next(network.parameters(), torch.empty(0)).device
    results: list[tuple[FloatArray, float]] = []
    # The caller may hold no_grad or inference_mode (as prediction code does): Grad-CAM
    # needs a graph from the input to the target layer.
    with torch.inference_mode(False), torch.enable_grad(), _borrowed(network, layer) as hooks:
        x = image.detach().to(device=device, dtype=torch.float32).clone().unsqueeze(0)
        # The parameters are frozen, so the input must ask for the graph to be built.
        x.requires_grad_(True)
        cam = GradCAM(
            nn_module=cast(Any, hooks),  # typed nn.Module, but takes a ModelWithHooks as is
            target_layers=layer,
            upsampler=default_upsampler,
            postprocessing=_unit_max,
        )
        for index in label_indices:
            heat = cam(x, class_idx=index)
            score = hooks.score  # the label's logit of the forward pass that made the map
            if score is None:
                raise RuntimeError("Grad-CAM ran no forward pass")
            probability = float(torch.sigmoid(score.detach()).reshape(-1)[0])
            results.append((heat.detach()[0, 0].cpu().double().numpy(), probability))
            hooks.activations.clear()
            hooks.gradients.clear()
    return results


def _display(image: torch.Tensor) -> FloatArray:
    """The image as an ``(H, W)`` grey array in [0, 1] (channel mean, min-max scaled)."""
    grey = image.detach().float().mean(dim=0).cpu().double().numpy()
    low, high = float(grey.min()), float(grey.max())
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return np.zeros_like(grey)
    scaled: FloatArray = (grey - low) / (high - low)
    return scaled


def _jet(values: FloatArray) -> FloatArray:
    channels = [np.interp(values, _JET_STOPS, _JET_RGB[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1)


def _resize(array: FloatArray, size: tuple[int, int]) -> FloatArray:
    resized = Image.fromarray(array.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def _render(grey: FloatArray, panels: Sequence[tuple[str, FloatArray | None]], size: int) -> bytes:
    height, width = grey.shape
    scale = size / max(height, width)
    panel = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = np.repeat(_resize(grey, panel)[..., None], 3, axis=-1)
    canvas = Image.new("RGB", (panel[0] * len(panels), panel[1] + CAPTION_HEIGHT), "black")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=CAPTION_HEIGHT // 2)
    for number, (caption, cam) in enumerate(panels):
        rgb = base
        if cam is not None:
            heat = _resize(cam, panel)
            alpha = (OVERLAY_ALPHA * heat)[..., None]
            rgb = base * (1.0 - alpha) + _jet(heat) * alpha
        tile = Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))
        left = number * panel[0]
        canvas.paste(tile, (left, 0))
        text = _fit(draw, caption, font, panel[0] - 8)
        draw.text(
            (left + 4, panel[1] + CAPTION_HEIGHT // 2), text, fill="white", font=font, anchor="lm"
        )
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
