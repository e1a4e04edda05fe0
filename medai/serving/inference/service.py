"""The inference part of one app: the model holder, the batcher, recent predictions, audit.

:class:`InferenceService` lives in ``app.state.inference`` when ``serve_model`` is set.
Started with the app, it sets torch's CPU threads, creates (or reads) the serving key,
starts the micro-batcher and loads the champion in the background, so the process
answers ``/healthz`` at once and ``/readyz`` says what it is waiting for. Then it checks
the alias every ``model_poll_seconds`` and switches versions without stopping: requests
already running finish on the version they started with.

:meth:`InferenceService.predict` is the work of ``POST /v1/predict`` (the route only
binds HTTP to it): check the upload's type, read it, parse the study, preprocess its
images, batch them through the network, audit the prediction, keep it for its heatmap
and report. It raises domain errors, which :mod:`medai.serving.errors` answers.

Parsing, decoding and preprocessing run in the service's own thread pool, one thread per
core (the instances of a study in parallel), beside the one inference thread; the
batcher waits for company only while other requests are being decoded; audit records of
concurrent predictions share one transaction (:mod:`~medai.serving.inference.audit_writer`).
Each stage of a request is timed into ``medai_inference_stage_seconds`` (decode,
preprocess, queue, forward, postprocess, audit, and gradcam when a heatmap is drawn).

A series-level model (``[data] level = "series"``, e.g. ``ct-nodule``) takes all the
instances of one series instead: they are assembled into one volume by
:func:`medai.dicom.series_geometry.assemble_series` (refused with
:class:`~medai.errors.SeriesRefused`, 422, and its reason code when they are not one
volume) and predicted as one input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from medai.audit import actors
from medai.errors import (
    MedaiError,
    ModelUnavailable,
    NotAudited,
    RequestTooLarge,
    SeriesRefused,
    UnreadableStudy,
)
from medai.serving.inference.audit import (
    audit_switch,
    load_or_create_serving_key,
    prediction_entry,
    study_hash,
)
from medai.serving.inference.audit_writer import AuditWriter
from medai.serving.inference.batcher import MicroBatcher
from medai.serving.inference.holder import ModelHolder, Refresh
from medai.serving.inference.model import ServedModel
from medai.serving.inference.predictions import PredictionStore, StoredPrediction, header_only
from medai.serving.inference.schemas import PredictionOut
from medai.serving.inference.upload import check_upload_type, parse_study, study_too_large
from medai.serving.keys import role_grants

if TYPE_CHECKING:
    import torch
    from pydicom.dataset import Dataset
    from sqlalchemy import Engine

    from medai.config import Settings
    from medai.serving.auth import Caller
    from medai.serving.metrics import ServiceMetrics

__all__ = ["BodyReader", "InferenceService", "cpu_threads", "forward_threads"]

logger = logging.getLogger(__name__)

# After a failed first load, try again this often (or at the poll interval if shorter).
_RETRY_S = 10.0
# highdicom logs the UIDs of the data sets it copies from at INFO: identifiers of the
# study, which must not reach the service's log whatever its level.
logging.getLogger("highdicom").setLevel(logging.WARNING)


class BodyReader(Protocol):
    """Reads a request's whole body, refusing it with ``too_large`` past ``max_bytes``.

    :func:`medai.serving.limits.read_whole_body` bound to the request.
    """

    async def __call__(self, *, max_bytes: int, too_large: RequestTooLarge) -> bytes: ...


def cpu_threads(setting: int, workers: int = 1) -> int:
    """Threads per process for CPU-bound work: ``setting``, or the cores shared by the workers.

    The default divides the cores among the worker processes, since each has its own
    pool and more threads than cores only makes them wait on each other.
    """
    if setting > 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def forward_threads(setting: int, workers: int = 1) -> int:
    """The forward pass's intra-op threads per process: ``setting``, or half its cores.

    Under load the forward pass runs beside the decode pool (one thread per core), which
    prepares the next batch meanwhile: giving the forward every core too makes both wait on
    each other. Measured with ``benchmarks/serve.py`` on 2 cores (the trained demo model,
    int8): 99 req/s at 32 clients with one forward thread against 77 with two; an idle
    service's single image takes 8.9 instead of 5.8 ms.
    """
    if setting > 0:
        return setting
    return max(1, cpu_threads(0, workers) // 2)


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
            expecting=lambda: self._preparing,
        )
        self.predictions = PredictionStore(
            ttl_s=settings.prediction_ttl_seconds, max_items=settings.max_kept_predictions
        )
        self.key: bytes | None = None
        self.key_problem: str | None = None
        self._poller: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.audit = AuditWriter(engine)
        # Requests between their body and the batcher (on the event loop: a plain int).
        self._preparing = 0

    def _decode_pool(self) -> ThreadPoolExecutor:
        """Threads for parsing, decoding and preprocessing: one per core of this process.

        Off the event loop and apart from the inference thread, so that decoding the next
        requests overlaps the forward pass of this one; sized to the cores because the work
        is CPU-bound (pydicom's and numpy's decoders release the GIL for the pixel work).
        """
        if self._pool is None:
            threads = cpu_threads(0, self.settings.serve_workers)
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="medai-decode")
        return self._pool

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

    def ready(self) -> tuple[ServedModel, bytes]:
        """The version to predict with and the serving key, or why there are none.

        Raises
        ------
        ModelUnavailable
            No version loaded yet, the serving key unusable, or the batcher stopped.
        """
        model, key, problem = self.holder.current, self.key, self.problem()
        if model is None or key is None or problem is not None:
            raise ModelUnavailable(problem or "no model is loaded")
        return model, key

    async def predict(
        self,
        content_type: str | None,
        read_body: BodyReader,
        *,
        caller: Caller,
        reference: str | None,
    ) -> StoredPrediction:
        """Predict the findings of the one study the request body holds, audited first.

        Parameters
        ----------
        content_type
            The request's Content-Type, checked before the body is read.
        read_body
            Reads the body (called once, with the study's size limit).
        caller
            Who asked: the owner of the prediction and the actor of its audit record.
        reference
            The caller's own reference, echoed in the answer (never logged or audited).

        Returns
        -------
        StoredPrediction
            The prediction, kept for ``prediction_ttl_seconds``; ``response`` is its JSON.

        Raises
        ------
        ModelUnavailable, BatcherStopped, NotAudited
            Predictions cannot be made or answered now (503).
        UnsupportedMediaType, MalformedMultipart, RequestTooLarge, UnreadableStudy
            The upload cannot be predicted (415, 400, 413, 422).
        """
        started = time.perf_counter()
        model, key = self.ready()
        kind = check_upload_type(content_type)
        settings = self.settings
        max_bytes = min(settings.max_predict_bytes, settings.max_request_bytes)
        body = await read_body(max_bytes=max_bytes, too_large=study_too_large(max_bytes))
        # Counted until its images are queued: the batcher waits for company only then.
        self._preparing += 1
        try:
            datasets, images, instances, slices = await self._prepare(
                model, kind, content_type or "", body
            )
        finally:
            self._preparing -= 1
        del body  # the data sets hold what is needed: do not keep the PHI twice
        results = await self.batcher.infer(model, images)
        self.metrics.observe_stage("queue", max(result.queue_s for result in results))
        self.metrics.observe_stage("forward", max(result.inference_s for result in results))
        postprocessed_at = time.perf_counter()
        probabilities = np.stack([result.probabilities for result in results])
        findings = model.findings(probabilities.max(axis=0).tolist())
        prediction_id = str(uuid.uuid4())
        postprocess_s = time.perf_counter() - postprocessed_at
        audited_at = time.perf_counter()
        try:
            # Written with the records of concurrent predictions, in one transaction.
            await self.audit.append(
                prediction_entry(
                    actor=caller.actor,
                    study=study_hash(key, str(datasets[0].StudyInstanceUID)),
                    prediction_id=prediction_id,
                    model=model.name,
                    version=model.version,
                    instances=instances,
                    findings=findings,
                )
            )
        except (SQLAlchemyError, MedaiError, ValueError) as exc:
            logger.error(
                "prediction %s could not be audited: %s", prediction_id, type(exc).__name__
            )
            raise NotAudited(
                "the prediction could not be audited, so it is not answered; retry"
            ) from None
        self.metrics.observe_stage("audit", time.perf_counter() - audited_at)
        answered_at = time.perf_counter()
        self.metrics.predictions.labels(model.name, model.version).inc()
        answer = PredictionOut.model_validate(
            {
                "prediction_id": prediction_id,
                "reference": reference,
                "model": {"name": model.name, "version": model.version, "alias": model.alias},
                "study": {"instances": instances, "slices": slices},
                "findings": [vars(finding) for finding in findings],
                "heatmap_url": f"/v1/predictions/{prediction_id}/heatmap.png",
                "timing_ms": {
                    "total": 1000 * (time.perf_counter() - started),
                    "queue": 1000 * max(result.queue_s for result in results),
                    "inference": 1000 * max(result.inference_s for result in results),
                },
            }
        ).model_dump(mode="json", exclude={"study": {"slices"}} if slices is None else None)
        import torch

        stored = StoredPrediction(
            id=prediction_id,
            owner=caller.name,
            model=model,
            findings=tuple(findings),
            instance_probabilities=probabilities,
            # A view for the one-image request: a torch op on the event loop gives up the
            # interpreter lock and waits to get it back from the decode threads.
            images=images[0].unsqueeze(0) if len(images) == 1 else torch.stack(images),
            source=header_only(datasets[0]),
            response=answer,
            series=tuple(header_only(ds) for ds in datasets) if slices is not None else (),
        )
        self.predictions.put(stored)
        self.metrics.observe_stage("postprocess", postprocess_s + time.perf_counter() - answered_at)
        return stored

    async def _prepare(
        self, model: ServedModel, kind: str, content_type: str, body: bytes
    ) -> tuple[list[Dataset], list[torch.Tensor], int, int | None]:
        """Parse the upload and make the network's inputs, in the decode pool (timed).

        Returns the data sets (for a series model: those that made the volume, in slice
        order), the inputs, the number of instances sent, and the slices (None for an
        instance-level model).
        """
        loop, pool = asyncio.get_running_loop(), self._decode_pool()
        parse = partial(
            parse_study,
            kind,
            content_type,
            body,
            max_instance_bytes=self.settings.max_instance_bytes,
        )
        if kind == "single" and not model.series_level:
            # One instance (the common request): parsed and prepared in one hop to the pool.
            datasets, image, decode_s, preprocess_s = await loop.run_in_executor(
                pool, _parse_and_prepare, model, parse
            )
            self.metrics.observe_stage("decode", decode_s)
            self.metrics.observe_stage("preprocess", preprocess_s)
            return datasets, [image], 1, None
        parsed_at = time.perf_counter()
        datasets = await loop.run_in_executor(pool, parse)
        parse_s = time.perf_counter() - parsed_at
        instances = len(datasets)
        if model.series_level:
            assembled_at = time.perf_counter()
            image, used = await loop.run_in_executor(pool, _preprocess_series, model, datasets)
            # Assembling a volume decodes and resamples at once: counted as decoding.
            self.metrics.observe_stage("decode", parse_s + time.perf_counter() - assembled_at)
            # The SR references the series: every slice that made the volume, in order.
            return [datasets[i] for i in used], [image], instances, len(used)
        # The instances of a study are decoded in parallel, one per thread of the pool.
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _prepare_instance, model, ds, number)
                for number, ds in enumerate(datasets, 1)
            )
        )
        self.metrics.observe_stage("decode", parse_s + sum(d for _, d, _ in prepared))
        self.metrics.observe_stage("preprocess", sum(p for _, _, p in prepared))
        return datasets, [image for image, _, _ in prepared], instances, None

    def prediction(self, prediction_id: str, caller: Caller) -> StoredPrediction | None:
        """A kept prediction of ``caller`` (an admin may read any); None otherwise.

        Someone else's prediction is None too: its existence is not theirs to learn.
        """
        stored = self.predictions.get(prediction_id)
        if stored is None:
            return None
        if stored.owner != caller.name and not role_grants(caller.role, "admin"):
            return None
        return stored

    async def heatmap_png(self, stored: StoredPrediction, index: int) -> bytes:
        """The Grad-CAM overlay of ``stored``'s positive findings on instance ``index``.

        Drawn once per instance (the batcher's thread runs it between batches), then kept
        with the prediction. Raises BatcherStopped when the service is stopping.
        """
        png = stored.heatmaps.get(index)
        if png is None:
            from medai.serving.inference.heatmap import gradcam_overlay_png

            positive = [i for i, finding in enumerate(stored.findings) if finding.positive]
            model, image = stored.model, stored.images[index]

            def draw() -> bytes:
                return gradcam_overlay_png(model.network, image, positive, model.labels)

            started = time.perf_counter()
            png = await self.batcher.run_exclusive(draw)
            self.metrics.observe_stage("gradcam", time.perf_counter() - started)
            stored.heatmaps[index] = png
        return png

    async def reload(self, actor: str) -> Refresh:
        """Follow the alias now (the admin endpoint).

        Raises
        ------
        ModelUnavailable
            When the new version cannot be loaded; its message says which version goes on
            being served.
        """
        try:
            return await self.refresh(actor)
        except ModelUnavailable as exc:
            served = self.model
            kept = "" if served is None else f" (still serving version {served.version})"
            raise ModelUnavailable(f"{exc}{kept}") from None

    async def start(self) -> None:
        """Set up threads, key and batcher; load the model and poll the alias in the background."""
        threads = forward_threads(self.settings.inference_threads, self.settings.serve_workers)

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
        await self.audit.drain()
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)
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
                await self.refresh(actors.system("serve"))
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


def _preprocess_series(
    model: ServedModel, datasets: list[Dataset]
) -> tuple[torch.Tensor, list[int]]:
    """The volume of the one series ``datasets`` hold, and the instances it was made of."""
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise SeriesRefused(
            "several-series",
            f"the {model.name} model reads one series as a volume: the request holds "
            f"{len(series)} series; send the instances of one series per request",
        )
    try:
        return model.preprocess_series(datasets)
    except SeriesRefused as exc:
        raise SeriesRefused(
            exc.reason_code,
            f"the series cannot be assembled into a volume ({exc.reason_code}): {exc}",
        ) from None
    except Exception as exc:  # decoding, or a photometric the reader cannot show
        raise UnreadableStudy(
            f"the series cannot be decoded into a volume ({type(exc).__name__})"
        ) from None


def _parse_and_prepare(
    model: ServedModel, parse: Callable[[], list[Dataset]]
) -> tuple[list[Dataset], torch.Tensor, float, float]:
    """Parse a one-instance upload and make its input: the data sets, the input, and the
    seconds of parsing and decoding, and of the transforms."""
    started = time.perf_counter()
    datasets = parse()
    parse_s = time.perf_counter() - started
    image, decode_s, preprocess_s = _prepare_instance(model, datasets[0], 1)
    return datasets, image, parse_s + decode_s, preprocess_s


def _prepare_instance(
    model: ServedModel, ds: Dataset, number: int
) -> tuple[torch.Tensor, float, float]:
    """The network input of instance ``number``, and the seconds its decode and transforms took."""
    started = time.perf_counter()
    try:
        decoded = model.decode(ds)
        decoded_at = time.perf_counter()
        image = model.transform(decoded)
    except Exception as exc:  # decoding, or a photometric the reader cannot show
        raise UnreadableStudy(
            f"the image of instance {number} cannot be decoded or shown ({type(exc).__name__})"
        ) from None
    return image, decoded_at - started, time.perf_counter() - decoded_at
