"""Resumable training: the state of a run after an epoch, saved, logged and restored.

After every epoch :func:`medai.training.loop.train` writes a :class:`Checkpoint`: the
network's weights, the best weights so far, the optimiser, learning-rate scheduler and
gradient scaler states, the epoch, the best score and epoch, the early-stopping counter,
the epoch history, and every random state the next epoch will draw from: Python's,
NumPy's and torch's global generators (and CUDA's), each data loader's shuffling
generator, and the generator of every random MONAI transform of the training chain.
Restoring all of them makes the remaining epochs draw exactly what an uninterrupted run
would have drawn, so a resumed run ends with the same weights and metrics (same seed,
same device and thread count).

:mod:`medai.training.tracking` logs each checkpoint to the MLflow run as it proceeds,
alternating between two artifacts (``checkpoints/slot-0.pt``, ``checkpoints/slot-1.pt``,
epoch modulo 2): a run killed while one is being written still has the other, and
:func:`latest_checkpoint` takes the newest that loads. Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from monai.transforms.transform import Randomizable, Transform

__all__ = [
    "CHECKPOINT_ARTIFACT_DIR",
    "FORMAT",
    "Checkpoint",
    "capture_rng",
    "config_digest",
    "latest_checkpoint",
    "read_checkpoint",
    "restore_rng",
    "slot_name",
    "write_checkpoint",
]

FORMAT: Final = 1
CHECKPOINT_ARTIFACT_DIR: Final = "checkpoints"
_SLOTS: Final = 2


def slot_name(epoch: int) -> str:
    """The file (and artifact) name epoch ``epoch``'s checkpoint is written to."""
    return f"slot-{epoch % _SLOTS}.pt"


def config_digest(config: Mapping[str, Any]) -> str:
    """A short hash of a configuration's JSON form (a resume must train the same one)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """A training run's state at the end of ``epoch``.

    ``history`` holds :class:`medai.training.loop.EpochResult` fields as dictionaries;
    ``rng`` what :func:`capture_rng` gave.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any]
    best_score: float
    best_epoch: int
    stale: int
    stopped_early: bool
    monitor: str
    history: list[dict[str, Any]]
    rng: dict[str, Any]
    config_digest: str
    world_size: int = 1
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)


def write_checkpoint(checkpoint: Checkpoint, directory: Path) -> Path:
    """Save ``checkpoint`` as ``directory/slot-<epoch % 2>.pt`` (atomically); the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / slot_name(checkpoint.epoch)
    partial = path.with_suffix(".part")
    payload = {item.name: getattr(checkpoint, item.name) for item in fields(checkpoint)}
    payload["best_score"] = _float_out(checkpoint.best_score)
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """Load one checkpoint file (tensors and plain containers only).

    Raises
    ------
    ValueError
        The file is not a medai checkpoint of a format this medai reads.
    """
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file fails in several ways
        raise ValueError(
            f"{path.name} is not a readable checkpoint ({type(exc).__name__})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path.name} is not a medai checkpoint of format {FORMAT}")
    payload["best_score"] = _float_in(payload["best_score"])
    return Checkpoint(**payload)


def latest_checkpoint(paths: Iterable[Path]) -> Checkpoint | None:
    """The newest checkpoint among ``paths`` that loads (a half-written one is skipped)."""
    found = []
    for path in paths:
        try:
            found.append(read_checkpoint(path))
        except (ValueError, OSError, TypeError):
            continue
    return max(found, key=lambda c: c.epoch, default=None)


def _float_out(value: float) -> float | str:
    # -inf (no best score yet) as text: kept exact through any container.
    return value if math.isfinite(value) else repr(value)


def _float_in(value: float | str) -> float:
    return float(value)


# ------------------------------------------------------------------------- random states


def _random_states(root: Any) -> Iterator[np.random.RandomState]:
    """Every NumPy generator of a transform chain, in a fixed order (depth first)."""
    seen: set[int] = set()

    def walk(obj: Any) -> Iterator[np.random.RandomState]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            yield obj
        elif isinstance(obj, list | tuple):
            for item in obj:
                yield from walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                yield from walk(item)
        elif isinstance(obj, Transform | Randomizable):
            for value in vars(obj).values():
                yield from walk(value)

    yield from walk(root)


def _numpy_out(state: Any) -> list[Any]:
    if not isinstance(state, tuple):  # NumPy gives the legacy tuple by default
        raise TypeError("expected a legacy NumPy random state")
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached]


def _numpy_in(state: list[Any]) -> tuple[Any, ...]:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))


def capture_rng(loaders: Mapping[str, Any], chains: Mapping[str, Any]) -> dict[str, Any]:
    """Every random state the next epoch draws from.

    Parameters
    ----------
    loaders
        The data loaders by split (each one's ``generator`` shuffles and seeds workers).
    chains
        The transform chains by split (each random transform's own generator).
    """
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": _numpy_out(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loaders": {
            split: loader.generator.get_state()
            for split, loader in loaders.items()
            if getattr(loader, "generator", None) is not None
        },
        "transforms": {
            split: [_numpy_out(state.get_state()) for state in _random_states(chain)]
            for split, chain in chains.items()
        },
    }


def restore_rng(
    state: Mapping[str, Any], loaders: Mapping[str, Any], chains: Mapping[str, Any]
) -> None:
    """Put back what :func:`capture_rng` captured (into the same kind of loaders and chains).

    Raises
    ------
    ValueError
        The chains have another number of random transforms than when captured (the
        configuration changed).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_in(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for split, generator_state in state["loaders"].items():
        loader = loaders.get(split)
        if loader is not None and getattr(loader, "generator", None) is not None:
            loader.generator.set_state(generator_state)
    for split, saved in state["transforms"].items():
        if split not in chains:
            continue
        generators = list(_random_states(chains[split]))
        if len(generators) != len(saved):
            raise ValueError(
                f"the {split} transforms have {len(generators)} random generators, the "
                f"checkpoint {len(saved)}: the configuration changed since it was written"
            )
        for generator, values in zip(generators, saved, strict=True):
            generator.set_state(_numpy_in(values))
