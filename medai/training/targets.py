"""MONAI bundle-style ``_target_`` entries in a model configuration, resolved safely.

A ``[network]``, ``[optimizer]``, ``[loss]`` table or an entry of ``[[transforms.extra]]``
may name a class by its full dotted path and give its keyword arguments beside it, as a
MONAI bundle does::

    [network]
    _target_ = "monai.networks.nets.Classifier"
    in_shape = ["@in_channels", 32, 32]
    classes = "@num_labels"
    channels = [8, 16]
    strides = [2, 2]

The entry is resolved by MONAI's own :class:`monai.bundle.ConfigParser`, with the values
medai knows (``@spatial_dims``, ``@in_channels``, ``@num_labels``, ``@image_size``) as the
parser's other ids. A configuration file is data, though, and the resolved configuration
is logged to MLflow and rebuilt by the inference service, so not everything a bundle may
say is accepted (each refusal names the field and says why):

- ``$`` expressions are refused: MONAI evaluates them with Python's ``eval``, which would
  let a configuration (or an MLflow artifact) run any code in the trainer and in the
  service. ``%`` macros (which read other files) and ``_requires_`` are refused too.
- ``_target_`` must be a full dotted path under the modules allowed for its section
  (:data:`ALLOWED`): a network from ``monai.networks.nets`` or ``torchvision.models``, an
  optimiser from ``torch.optim`` or ``monai.optimizers``, a loss from ``monai.losses`` or
  ``torch.nn``, a transform from ``monai.transforms``. Nested ``_target_`` entries (an
  argument that is itself a component) follow the same rule. MONAI's short names
  (``"Classifier"``) are not looked up: what a short name means depends on what happens
  to be imported, and the logged configuration must rebuild the same object.
- ``@name`` references name only what medai provides (:data:`REFERENCES`).
- ``_mode_`` may be ``"default"`` or ``"callable"`` (never ``"debug"``); ``_disabled_`` and
  ``_desc_`` are accepted.
- Weights are never downloaded: a network argument ``pretrained``/``*pretrained*`` that
  is true, or a non-empty ``weights``, is refused (``[network] weights`` names a local file).

Each section is built once when the configuration is validated (with the global random
generators left untouched), so an unknown target, a misspelt argument or a network
whose output is not ``(N, num_labels)`` logits fails when the file is loaded, not
mid-training.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import torch
from monai.bundle.config_parser import ConfigParser
from monai.transforms.compose import Compose
from monai.transforms.transform import MapTransform
from torch import nn

__all__ = [
    "ALLOWED",
    "REFERENCES",
    "TRAIN_ONLY_KEY",
    "TargetError",
    "build_loss",
    "build_network_target",
    "build_optimizer",
    "build_transform",
    "check_loss",
    "check_network",
    "check_optimizer",
    "check_transforms",
    "network_target_filled",
    "split_target",
]

TARGET_KEY: Final = "_target_"
# [[transforms.extra]]: ``_train_only_ = false`` applies a transform at evaluation and in the
# service too (default: training only, like medai's own augmentation).
TRAIN_ONLY_KEY: Final = "_train_only_"

ALLOWED: Final[dict[str, tuple[str, ...]]] = {
    "network": ("monai.networks.nets.", "torchvision.models."),
    "optimizer": ("torch.optim.", "monai.optimizers."),
    "loss": ("monai.losses.", "torch.nn."),
    "transforms": ("monai.transforms.",),
}
# Nested components (an activation factory, a sub-transform...) may come from any allowed
# module of MONAI's networks and transforms or torch.nn, besides their section's own.
_NESTED: Final = ("monai.networks.", "monai.transforms.", "torch.nn.")

REFERENCES: Final[dict[str, tuple[str, ...]]] = {
    "network": ("spatial_dims", "in_channels", "num_labels", "image_size"),
    "optimizer": (),
    "loss": ("num_labels",),
    "transforms": ("spatial_dims", "image_size", "keys"),
}
_ALLOWED_SPECIAL: Final = {TARGET_KEY, "_mode_", "_disabled_", "_desc_"}
_ALLOWED_MODES: Final = {"default", "callable"}
_COMPONENT_ID: Final = "component"


class TargetError(ValueError):
    """A ``_target_`` entry that cannot be used; ``field`` is where, relative to its section."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def split_target(data: Mapping[str, Any], own: Sequence[str]) -> dict[str, Any]:
    """A section as written in TOML, split into medai's own fields and the component.

    ``{"_target_": "x.Y", "a": 1, "weights": "w.pt"}`` with ``own=("weights",)`` gives
    ``{"weights": "w.pt", "target": {"_target_": "x.Y", "a": 1}}``: the component keeps its
    bundle form. Without ``_target_`` the section is returned unchanged.
    """
    if TARGET_KEY not in data:
        return dict(data)
    out: dict[str, Any] = {k: v for k, v in data.items() if k in own}
    out["target"] = {k: v for k, v in data.items() if k not in own}
    return out


# ---------------------------------------------------------------------------- checking


def _walk(value: Any, field: str) -> Iterator[tuple[str, Any]]:
    yield field, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{field}[{index}]")


def _locate(path: str) -> Any:
    """The object at a full dotted path (module, then attributes), or None."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None
        return obj
    return None


def _check_spec(spec: Mapping[str, Any], section: str) -> None:
    """Refuse what a configuration file may not say (see the module docstring)."""
    references = REFERENCES[section]
    for field, value in _walk(spec, ""):
        where = field or TARGET_KEY
        if isinstance(value, str):
            if value.startswith("$"):
                raise TargetError(
                    where,
                    "'$' expressions are not evaluated (a configuration is data, not code): "
                    "give the value itself",
                )
            if value.startswith("%"):
                raise TargetError(where, "'%' macros are not supported: give the value itself")
            if value.startswith("@"):
                name = value[1:]
                if name not in references:
                    known = ", ".join(f"@{r}" for r in references) or "none here"
                    raise TargetError(
                        where, f"unknown reference {value!r}; medai provides: {known}"
                    )
        if isinstance(value, Mapping):
            _check_component_keys(value, field, section)


def _check_component_keys(value: Mapping[str, Any], field: str, section: str) -> None:
    prefix = f"{field}." if field else ""
    for key in value:
        if not isinstance(key, str):
            raise TargetError(field, f"keys are strings, not {key!r}")
        if "#" in key or "::" in key:
            raise TargetError(f"{prefix}{key}", "keys may not contain '#' or '::'")
        if key.startswith("_") and key.endswith("_") and key not in _ALLOWED_SPECIAL:
            raise TargetError(
                f"{prefix}{key}",
                f"{key} is not supported; allowed: {', '.join(sorted(_ALLOWED_SPECIAL))}",
            )
    if "_mode_" in value and value["_mode_"] not in _ALLOWED_MODES:
        raise TargetError(f"{prefix}_mode_", "_mode_ is 'default' or 'callable'")
    if "_disabled_" in value and not isinstance(value["_disabled_"], bool):
        raise TargetError(f"{prefix}_disabled_", "_disabled_ is true or false")
    if TARGET_KEY not in value:
        return
    target = value[TARGET_KEY]
    where = f"{prefix}{TARGET_KEY}"
    if not isinstance(target, str) or not target:
        raise TargetError(where, "_target_ is the full dotted path of a class or function")
    allowed = ALLOWED[section] if not field else ALLOWED[section] + _NESTED
    if not target.startswith(allowed):
        raise TargetError(
            where,
            f"{target!r} is not allowed here: give a full dotted path under "
            f"{', '.join(p.rstrip('.') for p in allowed)}",
        )
    located = _locate(target)
    if located is None:
        raise TargetError(where, f"unknown target {target!r}: no such class or function")
    if _touches_files_or_runs_code(target, located):
        raise TargetError(
            where,
            f"{target!r} reads or writes files or calls a function it is given: a "
            "configuration the service rebuilds may do neither",
        )


# Transforms that are allowed by their module but would let a configuration act outside
# the tensors it is given: MONAI's image readers and writers (a `_train_only_ = false` entry
# runs in the service) and the transforms that call a function named in the file.
_REFUSED_MODULES: Final = ("monai.transforms.io", "monai.data")
_REFUSED_NAMES: Final = frozenset(
    {"Lambda", "Lambdad", "RandLambda", "RandLambdad", "FlattenSubKeysd", "SaveImage"}
)


def _touches_files_or_runs_code(target: str, located: Any) -> bool:
    module = str(getattr(located, "__module__", "") or "")
    name = target.rsplit(".", 1)[-1]
    return module.startswith(_REFUSED_MODULES) or name in _REFUSED_NAMES


def _no_downloads(kwargs: Mapping[str, Any]) -> None:
    for key, value in kwargs.items():
        if ("pretrained" in key and value) or (key == "weights" and value not in (None, "")):
            raise TargetError(
                key,
                "weights are never downloaded: leave it out and name a local state-dict file "
                "in [network] weights",
            )


# ---------------------------------------------------------------------------- building


def _parse(spec: Mapping[str, Any], section: str, values: Mapping[str, Any]) -> Any:
    """Instantiate ``spec`` with MONAI's ConfigParser, ``values`` as the other ids."""
    _check_spec(spec, section)
    content: dict[str, Any] = {k: copy.deepcopy(v) for k, v in values.items()}
    content[_COMPONENT_ID] = copy.deepcopy(dict(spec))
    # globals=False: no modules are put in reach of expressions (none are evaluated anyway).
    parser = ConfigParser(content, globals=False)
    target = spec.get(TARGET_KEY)
    try:
        return parser.get_parsed_content(_COMPONENT_ID, instantiate=True, eval_expr=False)
    except Exception as exc:  # MONAI wraps the callee's TypeError etc. in RuntimeError
        raise TargetError(TARGET_KEY, f"{target} could not be built: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    """The innermost error's text (MONAI's wrapping repeats the whole config)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _section_values(
    spatial_dims: int, num_labels: int, image_size: Sequence[int]
) -> dict[str, Any]:
    return {
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "num_labels": num_labels,
        "image_size": list(image_size),
    }


def build_network_target(
    spec: Mapping[str, Any], *, num_labels: int, image_size: Sequence[int]
) -> nn.Module:
    """The network of a ``[network]`` ``_target_`` entry (``in_channels`` is 1).

    Raises
    ------
    TargetError
        An unsupported entry, an unknown target, bad arguments, or not a torch module.
    """
    _no_downloads({k: v for k, v in spec.items() if k != TARGET_KEY})
    values = _section_values(len(image_size), num_labels, image_size)
    model = _parse({**spec, "_mode_": spec.get("_mode_", "default")}, "network", values)
    if not isinstance(model, nn.Module):
        raise TargetError(
            TARGET_KEY, f"{spec[TARGET_KEY]} gave a {type(model).__name__}, not a torch module"
        )
    return model


def network_target_filled(
    spec: Mapping[str, Any], *, num_labels: int, image_size: Sequence[int]
) -> dict[str, Any]:
    """A ``[network]`` entry with medai's ``@`` references replaced by their values.

    What a MONAI bundle's ``network_def`` needs (e.g. for an export): the same entry,
    standalone, resolved by the same parser without instantiating anything.
    """
    _check_spec(spec, "network")
    values = _section_values(len(image_size), num_labels, image_size)

    def fill(value: Any) -> Any:
        # As MONAI: only a whole-string "@id" is a reference (no '$' expressions here).
        if isinstance(value, str) and value.startswith("@"):
            return copy.deepcopy(values[value[1:]])
        if isinstance(value, Mapping):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [fill(item) for item in value]
        return value

    filled: dict[str, Any] = fill(spec)
    return filled


def check_network(spec: Mapping[str, Any], *, num_labels: int, image_size: Sequence[int]) -> None:
    """Build the network once and check it maps ``(1, 1, *image_size)`` to ``(1, num_labels)``."""
    with torch.random.fork_rng(devices=[]):
        model = build_network_target(spec, num_labels=num_labels, image_size=image_size)
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros((1, 1, *image_size)))
        except Exception as exc:
            raise TargetError(
                TARGET_KEY,
                f"{spec[TARGET_KEY]} fails on an input of shape (1, 1, "
                f"{', '.join(map(str, image_size))}): {_cause(exc)}",
            ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_labels):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TargetError(
            TARGET_KEY,
            f"{spec[TARGET_KEY]} must give logits of shape (N, num_labels) = (1, {num_labels}) "
            f"for one image, but gave {got}",
        )


def build_optimizer(spec: Mapping[str, Any], params: Any) -> torch.optim.Optimizer:
    """The optimiser of an ``[optimizer]`` ``_target_`` entry over ``params`` (injected)."""
    if "params" in spec:
        raise TargetError("params", "medai passes the network's parameters: leave params out")
    if "_mode_" in spec:
        raise TargetError("_mode_", "medai calls the optimiser itself: leave _mode_ out")
    factory = _parse({**spec, "_mode_": "callable"}, "optimizer", {})
    try:
        optimizer = factory(params)
    except Exception as exc:
        raise TargetError(
            TARGET_KEY, f"{spec[TARGET_KEY]} could not be built: {_cause(exc)}"
        ) from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TargetError(
            TARGET_KEY, f"{spec[TARGET_KEY]} gave a {type(optimizer).__name__}, not an optimizer"
        )
    return optimizer


def check_optimizer(spec: Mapping[str, Any]) -> None:
    """Build the optimiser once over a dummy parameter."""
    build_optimizer(spec, [nn.Parameter(torch.zeros(2))])


def _accepts(target: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(spec: Mapping[str, Any], *, num_labels: int) -> LossFunction:
    """The elementwise loss of a ``[loss]`` ``_target_`` entry.

    medai masks unknown labels itself, so the loss must give one value per logit: medai
    passes ``reduction="none"`` when the target takes a ``reduction`` (which the entry may
    not set), and the result must have the shape of the logits ``(N, num_labels)``. It is
    called on logits and targets with unknown labels set to 0.
    """
    if "reduction" in spec:
        raise TargetError(
            "reduction",
            "medai sets reduction='none' and averages over the known labels itself: leave "
            "reduction out",
        )
    if "_mode_" in spec:
        raise TargetError("_mode_", "leave _mode_ out of [loss]")
    _check_spec(spec, "loss")
    target = _locate(str(spec[TARGET_KEY]))
    extra = {"reduction": "none"} if _accepts(target, "reduction") else {}
    loss = _parse({**spec, **extra}, "loss", {"num_labels": num_labels})
    if not callable(loss):
        raise TargetError(TARGET_KEY, f"{spec[TARGET_KEY]} gave a {type(loss).__name__}")
    built: LossFunction = loss
    return built


def check_loss(spec: Mapping[str, Any], *, num_labels: int) -> None:
    """Build the loss once and check it gives one value per logit on a dummy batch."""
    loss = build_loss(spec, num_labels=num_labels)
    logits = torch.zeros((2, num_labels), requires_grad=True)
    targets = torch.zeros((2, num_labels))
    targets[0] = 1.0
    try:
        value = loss(logits, targets)
    except Exception as exc:
        raise TargetError(
            TARGET_KEY,
            f"{spec[TARGET_KEY]} fails on logits and targets of shape (2, {num_labels}): "
            f"{_cause(exc)}",
        ) from None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (2, num_labels):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TargetError(
            TARGET_KEY,
            f"{spec[TARGET_KEY]} must give one loss per label and image (reduction 'none'), "
            f"shape (2, {num_labels}) here, but gave {got}",
        )


def build_transform(
    spec: Mapping[str, Any], *, keys: Sequence[str], image_size: Sequence[int]
) -> MapTransform:
    """One ``[[transforms.extra]]`` entry: a MONAI dictionary transform.

    ``keys`` is the image keys unless the entry names its own; ``_train_only_`` is medai's
    (see :func:`medai.training.transforms.build_transforms`) and is not passed on.
    """
    component = {k: v for k, v in spec.items() if k != TRAIN_ONLY_KEY}
    if "_mode_" in component:
        raise TargetError("_mode_", "leave _mode_ out of a transform")
    _check_spec(component, "transforms")
    located = _locate(str(component[TARGET_KEY]))
    if not (isinstance(located, type) and issubclass(located, MapTransform)):
        raise TargetError(
            TARGET_KEY,
            f"{spec[TARGET_KEY]} is not a dictionary transform: use MONAI's dictionary "
            "version (the name ending in 'd', e.g. monai.transforms.RandGaussianNoised)",
        )
    component.setdefault("keys", "@keys")
    values = {"keys": list(keys), **_section_values(len(image_size), 1, image_size)}
    transform = _parse(component, "transforms", values)
    if not isinstance(transform, MapTransform):
        raise TargetError(
            TARGET_KEY,
            f"{spec[TARGET_KEY]} is not a dictionary transform: use MONAI's dictionary "
            "version (the name ending in 'd', e.g. monai.transforms.RandGaussianNoised)",
        )
    return transform


def check_transforms(
    specs: Sequence[Mapping[str, Any]], *, image_size: Sequence[int], keys: Sequence[str]
) -> None:
    """Build every extra transform and run them all on a blank image of ``image_size``."""
    chain: list[MapTransform] = []
    for index, spec in enumerate(specs):
        train_only = spec.get(TRAIN_ONLY_KEY, True)
        if not isinstance(train_only, bool):
            raise TargetError(f"[{index}].{TRAIN_ONLY_KEY}", "_train_only_ is true or false")
        if TARGET_KEY not in spec:
            raise TargetError(f"[{index}]", "each extra transform needs a _target_")
        try:
            chain.append(build_transform(spec, keys=keys, image_size=image_size))
        except TargetError as exc:
            raise TargetError(f"[{index}].{exc.field}", exc.message) from None
    data = {key: torch.zeros((1, *image_size)) for key in keys}
    with torch.random.fork_rng(devices=[]):
        try:
            Compose(chain)(data)
        except Exception as exc:
            raise TargetError(
                "",
                f"the extra transforms fail on an image of shape (1, "
                f"{', '.join(map(str, image_size))}): {_cause(exc)}",
            ) from None
