"""The app factory: one FastAPI app built from the routers of every part of the service.

The routers are imported here by name and included in :data:`ROUTERS`' order; each
protects its routes with the typed dependencies of :mod:`medai.serving.deps`. Only
``/healthz`` and ``/readyz`` are open (and the dashboard's sign-in page); the OpenAPI
document and its browser need a key too (:mod:`medai.serving.docs`). Every error is JSON
``{"detail": "..."}`` saying what to do, answered by :mod:`medai.serving.errors`;
request bodies are capped at ``max_request_bytes`` (:mod:`medai.serving.limits`).

With ``serve_model`` set, the app serves that registered model
(:class:`~medai.serving.inference.service.InferenceService` in ``app.state.inference``,
started and stopped with the app); its metrics are ``app.state.metrics``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from medai import __version__
from medai.config import Settings, get_settings
from medai.serving import (
    dashboard,
    dicomweb,
    dicomweb_query,
    dicomweb_retrieve,
    docs,
    edge_routes,
    health,
    metrics,
    quarantine_routes,
)
from medai.serving.context import Service
from medai.serving.cors import DicomwebCORSMiddleware
from medai.serving.docs import build_openapi
from medai.serving.errors import install_error_handlers
from medai.serving.inference import routes as inference_routes
from medai.serving.inference.service import InferenceService
from medai.serving.limits import BodyLimitMiddleware
from medai.serving.metrics import MetricsMiddleware, ServiceMetrics
from medai.serving.monitoring import routes as monitoring_routes
from medai.serving.monitoring.monitor import DriftCollector, DriftMonitor

__all__ = ["ROUTERS", "create_app"]

# Every router of the service, in the order they are included (adding one is one line).
ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    dicomweb.router,
    dicomweb_query.router,
    dicomweb_retrieve.router,
    edge_routes.router,
    dashboard.router,
    quarantine_routes.router,
    inference_routes.router,
    monitoring_routes.router,
    metrics.router,
    docs.router,
)


_DESCRIPTION = """
Every route but `/healthz` and `/readyz` needs an API key: `Authorization: Bearer <key>`
(`medai keys create --role clinician|steward|researcher|admin`). Clinician keys predict;
steward keys send studies (STOW-RS), read campaign progress and browse the de-identified
collection (QIDO-RS, WADO-RS under `/dicomweb`); researcher keys only browse it; admin keys
may do everything. A site's
edge gateway has an `edge` key (`--role edge --site SITE`): it sends that site's
de-identified instances (STOW-RS with `Medai-Receipt-Day`), its heartbeats
(`POST /v1/edge/heartbeat`) and reads the site's receipts (`GET /v1/edge/receipts`).

**Inference.** `POST /v1/predict` with one study (`application/dicom`, or several instances
as `multipart/related; type="application/dicom"`) answers each finding's probability and
its decision at the model's operating threshold. The study-level probability of a finding
is the highest over the study's instances. With `Accept: application/dicom` the answer is a
DICOM Comprehensive 3D SR for the PACS. The answer names no patient or study identifier; pass
your own reference as the `Medai-Reference` header and it is echoed back. The input is
held in memory only, never written to disk. *Research pilot: not a medical device.*

**Monitoring.** `GET /v1/models/{name}/monitoring` compares the last predictions of each
site (the caller's edge site or key name) and overall with the served version's training
reference: `unknown`, `ok`, `warn` or `drift`. `POST /v1/predictions/{id}/feedback` takes a
clinician's agreement with each finding (and an optional final diagnosis code), stored
pseudonymously and audited.
"""


def _served(inference: InferenceService) -> Callable[[], tuple[str, str, str] | None]:
    """The served version as the monitor's gauges name it, or None before the first load."""

    def served() -> tuple[str, str, str] | None:
        model = inference.model
        return None if model is None else (model.name, model.version, model.run_id)

    return served


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the web service.

    Parameters
    ----------
    settings
        Where the catalog, store, quarantine and MLflow are, the limits, the served
        model; the process-wide :func:`medai.config.get_settings` when None.

    Returns
    -------
    fastapi.FastAPI
        Serve it with uvicorn (``medai serve``) or test it with ``TestClient``. Its
        :class:`~medai.serving.context.Service` is ``app.state.service``.
    """
    settings = settings or get_settings()
    service = Service(settings)
    service_metrics = ServiceMetrics(service.security)
    inference: InferenceService | None = None
    monitor: DriftMonitor | None = None
    if settings.serve_model.strip():
        inference = InferenceService(settings, service.engine, service_metrics)
        # Drift of the served model's inputs and scores, and feedback (monitoring).
        monitor = DriftMonitor(settings, service.engine)
        service_metrics.registry.register(DriftCollector(monitor, _served(inference)))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if inference is not None:
            await inference.start()
        try:
            yield
        finally:
            if monitor is not None:  # the records of predictions answered last
                await monitor.recorder.drain()
            if inference is not None:
                await inference.stop()
            service.close()

    app = FastAPI(
        title="medai",
        version=__version__,
        summary="DICOM collection (STOW-RS) and imaging-AI services of the medai pilot.",
        description=_DESCRIPTION,
        lifespan=lifespan,
        # Only the health routes are open: the API browser and document are routes of
        # medai.serving.docs, behind a key.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    app.state.metrics = service_metrics
    app.state.inference = inference
    app.state.monitor = monitor
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        # Around the body limit (its 413 reaches the viewer readable) and before routing,
        # so a preflight (no Authorization) is answered here, never by the key dependency.
        app.add_middleware(DicomwebCORSMiddleware, origins=settings.cors_origins)
    # Outermost: it counts the body limit's 413s too.
    app.add_middleware(MetricsMiddleware, metrics=service_metrics)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = functools.partial(build_openapi, app)  # type: ignore[method-assign]
    return app
