"""The app factory: one FastAPI app built from the routers of every part of the service.

Adding a router is one line in :data:`ROUTER_MODULES`: a module exposing ``router``
(an :class:`fastapi.APIRouter`) whose routes protect themselves with
:func:`medai.serving.auth.require_role`. Only ``/healthz`` and ``/readyz`` are open.
Every error is JSON ``{"detail": "..."}`` saying what to do; request bodies are capped
at ``max_request_bytes`` (:mod:`medai.serving.limits`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from medai import __version__
from medai.config import Settings, get_settings
from medai.serving.context import Service
from medai.serving.limits import BodyLimitMiddleware

__all__ = ["ROUTER_MODULES", "create_app"]

logger = logging.getLogger(__name__)

# Each module exposes `router`; included in this order.
ROUTER_MODULES: tuple[str, ...] = (
    "medai.serving.health",
    "medai.serving.dicomweb",
    "medai.serving.dashboard",
)


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

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="medai",
        version=__version__,
        summary="DICOM collection (STOW-RS) and imaging-AI services of the medai pilot.",
        lifespan=lifespan,
        # Only the health routes are open: no unauthenticated API browser.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_exception_handler(Exception, _internal_error)
    for name in ROUTER_MODULES:
        app.include_router(importlib.import_module(name).router)
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
