"""Data-parallel training under ``torchrun``: the process group, ranks, and collectives.

Why it is shaped this way:

- The launcher is the only source of truth. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``
  and ``LOCAL_RANK``; without them (a notebook, ``medai train``) every helper here
  answers as the one process of a world of size 1 and no process group is created, so
  single-process training runs the very same code with no collective in its path.
- :func:`process_group` is a context manager owned by whoever starts a run
  (:func:`medai.training.tracking.train_tracked`), not by :func:`medai.training.loop.train`:
  a caller that already set up a group (a notebook under ``torchrun``) keeps it, and the
  group is destroyed only by the code that created it.
- Backend from the device: NCCL for CUDA (one GPU per local rank, ``cuda:LOCAL_RANK``),
  gloo for the CPU, which is also what the tests use (two processes on one machine).
- Evaluation gathers Python objects (:func:`all_gather_objects`), not tensors: the
  shards' arrays differ in length by one when a split does not divide evenly, the sites
  are strings, and the amounts (a validation split per epoch) are small beside training.
  :func:`interleave` undoes the ``records[rank::world]`` sharding, so every rank sees the
  split in manifest order, as one process would: the same images once each, in the same
  order (the bootstrap CIs resample rows by position), with probabilities equal up to the
  float32 rounding of batches of other sizes. No sampler padding, which would count
  some images twice.
- Early-stopping decisions go through :func:`broadcast_object` from rank 0: the gathered
  metrics are the same on every rank, but a decision that must be identical everywhere
  (or the ranks deadlock in the next collective) should not rest on floating point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "gather_split",
    "interleave",
    "is_main_process",
    "launched_by_torchrun",
    "launcher_rank",
    "process_group",
    "rank",
    "resolve_device",
    "world_size",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Longer than torch's 10 min default: rank 0 exports and registers the model in MLflow
# while the other ranks wait in the last collective.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank, world size, the device it trains on, the backend.

    ``backend`` is None in a world of one process (no process group).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs, registers and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def launched_by_torchrun() -> bool:
    """Whether the environment names a world of more than one process (``torchrun``)."""
    return _env_int("WORLD_SIZE", 1) > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if _initialized() else 0


def launcher_rank() -> int:
    """The rank ``torchrun`` gave this process (``RANK``; 0 when not launched by it).

    Known before the process group exists, so a command can decide early, e.g. to stay
    silent on the ranks other than 0.
    """
    return _env_int("RANK", 0)


def world_size() -> int:
    """The number of processes in the process group (1 without one)."""
    return dist.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always, in a world of one)."""
    return rank() == 0


def resolve_device(requested: str | None) -> torch.device:
    """The device to train on: ``requested``, else CUDA when available, else the CPU.

    Under ``torchrun`` a CUDA device without an index becomes ``cuda:LOCAL_RANK``, so
    each process of a node drives its own GPU.
    """
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return device


@contextmanager
def process_group(device: str | None = None) -> Iterator[DistributedContext]:
    """Join the ``torchrun`` process group for the duration of the block.

    Outside ``torchrun``, or when a group already exists, nothing is created or
    destroyed: the block runs with the existing state.

    Parameters
    ----------
    device
        The requested device (``"cpu"``, ``"cuda"``...); see :func:`resolve_device`.
        It chooses the backend: NCCL for CUDA, gloo otherwise.

    Yields
    ------
    DistributedContext
    """
    target = resolve_device(device)
    created = False
    if launched_by_torchrun() and not _initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        if target.type == "cuda":
            # Before init: NCCL and the object collectives use the current device.
            torch.cuda.set_device(target)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        created = True
        logger.info(
            "joined process group: rank %d of %d (%s on %s)",
            dist.get_rank(),
            dist.get_world_size(),
            backend,
            target,
        )
    context = DistributedContext(
        rank=rank(),
        world_size=world_size(),
        local_rank=_env_int("LOCAL_RANK", 0),
        device=target,
        backend=dist.get_backend() if _initialized() else None,
    )
    try:
        yield context
    finally:
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a world of one)."""
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank (``value`` itself in a world of one)."""
    if world_size() == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[no-any-return]


def all_gather_objects(value: T) -> list[T]:
    """Every rank's ``value``, in rank order (``[value]`` in a world of one)."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over the ranks, in float64.

    ``device`` is where the reduction runs: the training device, since NCCL reduces
    CUDA tensors only.
    """
    if world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (batch-norm running statistics) to every rank.

    DistributedDataParallel broadcasts them before each forward pass, but the last
    training step then updates each rank's copy with its own batch: without this the
    ranks would evaluate, and save, slightly different networks.
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def interleave(parts: Sequence[Sequence[T]]) -> list[T]:
    """Undo ``items[rank::world]`` sharding: ``parts[r]`` holds items ``r, r + W, ...``."""
    width = len(parts)
    total = sum(len(part) for part in parts)
    return [parts[index % width][index // width] for index in range(total)]


def gather_split(
    labels: npt.NDArray[np.float64],
    probs: npt.NDArray[np.float64],
    sites: list[str],
    totals: tuple[float, int],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[str], tuple[float, int]]:
    """One split's predictions from every rank's shard, in manifest order, on every rank.

    Parameters
    ----------
    labels, probs
        This rank's ``(n_r, L)`` rows, for records ``rank, rank + W, ...`` of the split.
    sites
        Their sites.
    totals
        This rank's summed masked loss and number of known labels.

    Returns
    -------
    tuple
        The whole split's labels, probabilities, sites and summed totals.
    """
    if world_size() == 1:
        return labels, probs, sites, totals
    shards = all_gather_objects((labels, probs, sites, totals))
    width = max(shard[0].shape[1] for shard in shards)

    def rows(index: int) -> list[npt.NDArray[np.float64]]:
        return interleave([list(shard[index]) for shard in shards])

    def stack(items: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
        return np.stack(items) if items else np.empty((0, width), dtype=np.float64)

    loss = sum(shard[3][0] for shard in shards)
    known = sum(shard[3][1] for shard in shards)
    return (
        stack(rows(0)),
        stack(rows(1)),
        interleave([shard[2] for shard in shards]),
        (float(loss), int(known)),
    )
