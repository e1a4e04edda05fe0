"""Micro-batching: images of concurrent requests share one forward pass, off the event loop.

Each request queues its instances' preprocessed images. One worker task takes the first
image waiting, then up to ``max_batch_size`` in all, waiting at most ``max_wait_s`` for
more; the batch runs on the one inference thread, and each request's future gets its
rows. While a batch runs, newly queued images wait and form the next batch, so under
load batches fill up by themselves and the wait only applies to an idle service.

With ``expecting`` (the service counts the requests still being decoded), the first
image waits for company only while some is on its way: a lone request on an idle
service is forwarded at once instead of paying ``max_wait_s`` for nothing.

A batch holds images of one model version only: during an alias switch, images of
requests that started on the old version are forwarded by the old network.

Everything that touches a network (forward passes, Grad-CAM) runs on the single
inference thread (:meth:`MicroBatcher.run_exclusive`): Grad-CAM's hooks on a module
would otherwise see other requests' activations, and one thread keeps torch's own
intra-op thread pool from being oversubscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

    from medai.serving.inference.model import ServedModel

from medai.errors import BatcherStopped

__all__ = ["InstanceResult", "MicroBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class InstanceResult:
    """The forward pass of one image.

    Attributes
    ----------
    probabilities
        Per-label probabilities, ``(num_labels,)``.
    queue_s
        Seconds from being queued to its batch's forward pass starting.
    inference_s
        Seconds the batch's forward pass took.
    batch_size
        Images in that forward pass.
    """

    probabilities: npt.NDArray[np.float32]
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Item:
    model: ServedModel
    image: torch.Tensor
    future: asyncio.Future[InstanceResult]
    queued_at: float


class MicroBatcher:
    """Collects images from concurrent requests into batches for one inference thread.

    Parameters
    ----------
    max_batch_size
        Most images in one forward pass.
    max_wait_s
        How long the first image of a batch waits for others.
    on_batch
        Called as ``on_batch(size, queue_s, inference_s)`` after each forward pass (metrics).
    expecting
        How many images (or requests) are being prepared and will be queued soon; a batch
        waits for more only while it is above zero. None: always wait up to ``max_wait_s``.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int, float, float], None] | None = None,
        expecting: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self._on_batch = on_batch
        self._expecting = expecting
        self._queue: asyncio.Queue[_Item] | None = None
        self._taken: list[_Item] = []
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        """Start the worker task and the inference thread (inside the running loop)."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medai-inference")
        self._worker = asyncio.create_task(self._work(), name="medai-batcher")

    async def stop(self) -> None:
        """Stop taking images; finish the batch that runs; fail those still waiting."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        waiting = list(self._taken)
        self._taken.clear()
        if self._queue is not None:
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(BatcherStopped("the service is stopping"))
        if self._executor is not None:
            # Waits for a forward pass in progress; nothing new can be submitted.
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    async def infer(
        self, model: ServedModel, images: Sequence[torch.Tensor]
    ) -> list[InstanceResult]:
        """Forward ``images`` (each ``(1, *image_size)``) with ``model``, batched with others.

        Returns
        -------
        list of InstanceResult
            In the order of ``images``.

        Raises
        ------
        BatcherStopped
            When the batcher is not running (the service is starting or stopping).
        """
        if not self.running or self._queue is None:
            raise BatcherStopped("the inference worker is not running")
        loop = asyncio.get_running_loop()
        items = [_Item(model, image, loop.create_future(), time.perf_counter()) for image in images]
        for item in items:
            self._queue.put_nowait(item)
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            # A client gone or an error: its other images need not be forwarded.
            for item in items:
                item.future.cancel()
            raise

    async def run_exclusive(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the inference thread, between forward passes (e.g. Grad-CAM)."""
        if self._executor is None:
            raise BatcherStopped("the inference worker is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def _collect(self, queue: asyncio.Queue[_Item], taken: list[_Item]) -> None:
        # Into `taken`, not a local list: items taken when the worker is cancelled must
        # still be answered (by stop()).
        taken.append(await queue.get())
        deadline = time.perf_counter() + self.max_wait_s
        while len(taken) < self.max_batch_size:
            try:
                taken.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or (self._expecting is not None and self._expecting() <= 0):
                break
            try:
                taken.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break

    async def _work(self) -> None:
        assert self._queue is not None
        queue, taken = self._queue, self._taken
        while True:
            taken.clear()
            await self._collect(queue, taken)
            groups: dict[int, list[_Item]] = {}
            for item in taken:
                if not item.future.cancelled():
                    groups.setdefault(id(item.model), []).append(item)
            for items in groups.values():
                await self._forward(items)

    async def _forward(self, items: list[_Item]) -> None:
        import torch

        model = items[0].model
        started = time.perf_counter()

        def run() -> npt.NDArray[np.float32]:
            return model.predict(torch.stack([item.image for item in items]))

        running = asyncio.ensure_future(self.run_exclusive(run))
        stopping = False
        try:
            try:
                probabilities = await asyncio.shield(running)
            except asyncio.CancelledError:
                # stop(): the batch already on the inference thread is finished and
                # answered; then the worker ends.
                stopping = True
                probabilities = await running
        except Exception as exc:  # every request of the batch learns of it
            logger.error("forward pass of %d image(s) failed: %s", len(items), type(exc).__name__)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            if stopping:
                raise asyncio.CancelledError from None
            return
        inference_s = time.perf_counter() - started
        for row, item in zip(probabilities, items, strict=True):
            if not item.future.done():
                item.future.set_result(
                    InstanceResult(row, started - item.queued_at, inference_s, len(items))
                )
        if self._on_batch is not None:
            queue_s = max(started - item.queued_at for item in items)
            self._on_batch(len(items), queue_s, inference_s)
        if stopping:
            raise asyncio.CancelledError
