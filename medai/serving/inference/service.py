"""The inference part of one app: the model holder, the batcher, recent predictions, audit.

:class:`InferenceService` lives in ``app.state.inference`` when ``serve_model`` is set.
Started with the app, it sets torch's CPU threads, creates (or reads) the serving key,
starts the micro-batcher and loads the champion in the background, so the process
answers ``/healthz`` at once and ``/readyz`` says what it is waiting for. Then it checks
the alias every ``model_poll_seconds`` and switches versions without stopping: requests
already running finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from medai.errors import MedaiError, ModelUnavailable
from medai.serving.inference.audit import audit_switch, load_or_create_serving_key
from medai.serving.inference.batcher import MicroBatcher
from medai.serving.inference.model import ModelHolder, Refresh, ServedModel
from medai.serving.inference.predictions import PredictionStore

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from medai.config import Settings
    from medai.serving.metrics import ServiceMetrics

__all__ = ["InferenceService", "cpu_threads"]

logger = logging.getLogger(__name__)

# After a failed first load, try again this often (or at the poll interval if shorter).
_RETRY_S = 10.0
# highdicom logs the UIDs of the data sets it copies from at INFO: identifiers of the
# study, which must not reach the service's log whatever its level.
logging.getLogger("highdicom").setLevel(logging.WARNING)


def cpu_threads(setting: int, workers: int = 1) -> int:
    """torch's intra-op threads per process: ``setting``, or the cores shared by the workers.

    The default divides the cores among the worker processes, since each has its own
    pool and more threads than cores only makes them wait on each other.
    """
    if setting > 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


class InferenceService:
    """The served model and everything requests share to use it.

    Parameters
    ----------
    settings
        ``serve_model`` and the other inference settings.
    engine
        The catalog (for audit records).
    metrics
        Where batch sizes and model switches are recorded.
    """

    def __init__(self, settings: Settings, engine: Engine, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.holder = ModelHolder(settings, on_switch=self._switched)
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            on_batch=metrics.observe_batch,
        )
        self.predictions = PredictionStore(
            ttl_s=settings.prediction_ttl_seconds, max_items=settings.max_kept_predictions
        )
        self.key: bytes | None = None
        self.key_problem: str | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def model(self) -> ServedModel | None:
        """The version served now (None until the first load succeeded)."""
        return self.holder.current

    def problem(self) -> str | None:
        """Why predictions cannot be made now (a sentence saying what to do), or None."""
        if self.key_problem is not None:
            return self.key_problem
        if self.holder.current is None:
            return f"no model is loaded yet: {self.holder.problem}"
        if not self.batcher.running:
            return "the inference worker is not running"
        return None

    async def start(self) -> None:
        """Set up threads, key and batcher; load the model and poll the alias in the background."""
        workers = int(os.environ.get("MEDAI_SERVE_WORKERS", "1") or 1)
        threads = cpu_threads(self.settings.inference_threads, workers)

        def prepare() -> bytes:
            import torch  # the first import takes seconds: not on the event loop

            torch.set_num_threads(threads)
            return load_or_create_serving_key(self.settings.resolved_serving_key_file)

        try:
            self.key = await asyncio.to_thread(prepare)
        except (MedaiError, OSError) as exc:
            self.key_problem = f"the serving key cannot be used: {exc}"
            logger.error("%s", self.key_problem)
        await self.batcher.start()
        self._poller = asyncio.create_task(self._poll(), name="medai-model-poller")

    async def stop(self) -> None:
        """Stop polling and batching; forget the kept predictions."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await self.batcher.stop()
        self.predictions.clear()

    async def refresh(self, actor: str) -> Refresh:
        """Follow the alias now (the admin endpoint); raises :class:`ModelUnavailable`."""
        try:
            return await asyncio.to_thread(self.holder.refresh, actor)
        except ModelUnavailable:
            self.metrics.model_load_failures.inc()
            raise

    async def _poll(self) -> None:
        poll = self.settings.model_poll_seconds
        last_problem: str | None = None
        while True:
            try:
                await self.refresh("medai-serve")
                last_problem = None
            except Exception as exc:
                if isinstance(exc, ModelUnavailable):
                    problem = str(exc)
                else:  # MLflow or its database failing in some other way
                    self.metrics.model_load_failures.inc()
                    problem = f"checking the served model failed: {type(exc).__name__}"
                    logger.debug("traceback", exc_info=exc)
                kept = self.holder.current
                if kept is not None:
                    problem += f" (still serving version {kept.version})"
                # Said once, not at every retry: the log stays readable while it lasts.
                logger.log(
                    logging.ERROR if problem != last_problem else logging.DEBUG, "%s", problem
                )
                last_problem = problem
            if self.holder.current is None:
                await asyncio.sleep(min(_RETRY_S, poll) if poll > 0 else _RETRY_S)
            elif poll > 0:
                await asyncio.sleep(poll)
            else:
                return  # loaded, and not asked to follow the alias

    def _switched(self, previous: ServedModel | None, model: ServedModel, actor: str) -> None:
        self.metrics.serving(
            model.name, model.version, model.alias, None if previous is None else previous.version
        )
        try:
            audit_switch(
                self.engine,
                actor=actor,
                model=model.name,
                version=model.version,
                previous=None if previous is None else previous.version,
                alias=model.alias,
            )
        except (SQLAlchemyError, MedaiError) as exc:
            # The switch happened; a missing record is logged loudly rather than undone.
            logger.error(
                "could not audit the switch to %s version %s: %s",
                model.name,
                model.version,
                type(exc).__name__,
            )
