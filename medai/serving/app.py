"""The app factory: one FastAPI app built from the routers of every part of the service.

Adding a router is one line in :data:`ROUTER_MODULES`: a module exposing ``router``
(an :class:`fastapi.APIRouter`) whose routes protect themselves with
:func:`medai.serving.auth.require_role`. Only ``/healthz`` and ``/readyz`` are open
(and the dashboard's sign-in page); the OpenAPI document and its browser need a key too
(:mod:`medai.serving.docs`). Every error is JSON ``{"detail": "..."}`` saying what to
do; request bodies are capped at ``max_request_bytes`` (:mod:`medai.serving.limits`).

With ``serve_model`` set, the app serves that registered model
(:class:`~medai.serving.inference.service.InferenceService` in ``app.state.inference``,
started and stopped with the app); its metrics are ``app.state.metrics``.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from medai import __version__
from medai.config import Settings, get_settings
from medai.serving.context import Service
from medai.serving.docs import build_openapi
from medai.serving.limits import BodyLimitMiddleware
from medai.serving.metrics import MetricsMiddleware, ServiceMetrics

if TYPE_CHECKING:
    from medai.serving.inference.service import InferenceService

__all__ = ["ROUTER_MODULES", "create_app"]

logger = logging.getLogger(__name__)

# Each module exposes `router`; included in this order.
ROUTER_MODULES: tuple[str, ...] = (
    "medai.serving.health",
    "medai.serving.dicomweb",
    "medai.serving.dashboard",
    "medai.serving.inference.routes",
    "medai.serving.metrics",
    "medai.serving.docs",
)


_DESCRIPTION = """
Every route but `/healthz` and `/readyz` needs an API key: `Authorization: Bearer <key>`
(`medai keys create --role clinician|steward|admin`). Clinician keys predict; steward keys
send studies (STOW-RS) and read campaign progress; admin keys may do everything.

**Inference.** `POST /v1/predict` with one study (`application/dicom`, or several instances
as `multipart/related; type="application/dicom"`) answers each finding's probability and
its decision at the model's operating threshold. The study-level probability of a finding
is the highest over the study's instances. With `Accept: application/dicom` the answer is a
DICOM Comprehensive SR for the PACS. The answer names no patient or study identifier; pass
your own reference as the `Medai-Reference` header and it is echoed back. The input is
held in memory only, never written to disk. *Research pilot: not a medical device.*
"""


def create_app(settings: Settings | None = None, *, body_idle_timeout: float = 60.0) -> FastAPI:
    """Build the web service.

    Parameters
    ----------
    settings
        Where the catalog, store and quarantine are and the limits; the process-wide
        :func:`medai.config.get_settings` when None.
    body_idle_timeout
        Seconds an upload may send nothing before it is given up (408).

    Returns
    -------
    fastapi.FastAPI
        Serve it with uvicorn (``medai serve``) or test it with ``TestClient``. Its
        :class:`~medai.serving.context.Service` is ``app.state.service``.
    """
    settings = settings or get_settings()
    service = Service(settings, body_idle_timeout=body_idle_timeout)
    metrics = ServiceMetrics()
    inference: InferenceService | None = None
    if settings.serve_model.strip():
        from medai.serving.inference.service import InferenceService

        inference = InferenceService(settings, service.engine, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if inference is not None:
            await inference.start()
        try:
            yield
        finally:
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
    app.state.metrics = metrics
    app.state.inference = inference
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    # Outermost: it counts the body limit's 413s too.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(Exception, _internal_error)
    for name in ROUTER_MODULES:
        app.include_router(importlib.import_module(name).router)
    app.openapi = functools.partial(build_openapi, app)  # type: ignore[method-assign]
    return app


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Only the type is logged: exception text from DICOM libraries may quote file values.
    route = getattr(request.scope.get("route"), "path", "?")
    logger.error("unexpected %s handling %s %s", type(exc).__name__, request.method, route)
    logger.debug("traceback", exc_info=exc)
    return JSONResponse(
        {"detail": "internal error (logged on the server); retry, or tell the operator"},
        status_code=500,
    )
