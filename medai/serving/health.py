"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (it can do its work).

Both are open (no API key), for load balancers and service managers. ``/readyz``
answers 200 only when the catalog is reachable and migrated to the schema this code
expects (every deployment keeps its API keys and audit log there), and

- for a campaign deployment (``serve_campaign``, the default): a campaign is initialised
  in it and the campaign's key file is readable and is the campaign's;
- when the service serves a model (``serve_model``): the model is loaded and the serving
  key readable;

otherwise 503 with ``{"status": "not-ready", "detail": "<what to do>"}``. Neither says
which model version is served: that is ``GET /v1/models``, with a key.

Why an explicit setting rather than guessing from what is there: a campaign deployment
whose key file went missing (a volume not mounted, a restore without the key) looks
exactly like an inference-only one. Guessing would answer "ready" for a service whose
STOW-RS refuses every upload; ``MEDAI_SERVE_CAMPAIGN=false`` says it on purpose.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from medai.catalog.db import alembic_config, session_factory
from medai.catalog.models import Campaign
from medai.collection.campaign.sites import stored_campaign
from medai.collection.key_guard import check_key, record_key_mismatch
from medai.errors import KeyMismatch, MedaiError
from medai.serving.context import Service
from medai.serving.deps import ServiceDep
from medai.serving.errors import CATALOG_UNREACHABLE

__all__ = ["readiness_problem", "router"]

router = APIRouter(tags=["health"])


@functools.cache
def _schema_heads() -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def readiness_problem(service: Service) -> str | None:
    """Why the service cannot take requests yet (a sentence saying what to do), or None."""
    campaign = service.settings.serve_campaign
    if not campaign and not service.settings.serve_model:
        return (
            "this service serves neither a campaign (MEDAI_SERVE_CAMPAIGN=false) nor a model "
            "(MEDAI_SERVE_MODEL is empty): set one of them"
        )
    # An inference-only service needs a migrated catalog (keys, audit), not a campaign.
    init_hint = (
        "run `medai campaign init FILE`"
        if campaign
        else "run `medai keys create` (it sets the catalog up for an inference-only service)"
    )
    url = service.engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).exists():
            return f"there is no catalog database yet: {init_hint}"
    reader = service.engine.execution_options(sqlite_begin="DEFERRED")
    try:
        with reader.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
        if revision not in _schema_heads():
            state = f"at revision {revision}" if revision else "empty"
            return (
                f"the catalog is not migrated ({state}; this medai expects "
                f"{', '.join(sorted(_schema_heads()))}): {init_hint}"
            )
        if not campaign:
            return None
        with session_factory(reader)() as session:
            stored_campaign(session)
            recorded = session.scalars(
                select(Campaign.key_fingerprint).order_by(Campaign.id)
            ).first()
    except MedaiError as exc:
        return str(exc)
    except SQLAlchemyError as exc:  # readiness reports it rather than answering an error
        return f"{CATALOG_UNREACHABLE} ({type(exc).__name__})"
    try:
        # The check STOW's pipeline makes: ready only with the campaign's own key.
        check_key(service.settings.resolved_key_file, recorded)
    except KeyMismatch as exc:
        if recorded is not None:  # a security event (repeats folded: one a minute)
            record_key_mismatch(
                service.engine,
                service.settings.resolved_key_file,
                recorded,
                service.security.recorder,
            )
        return str(exc)
    except MedaiError as exc:
        return str(exc)
    return None


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _inference_problem(request: Request) -> str | None:
    inference = getattr(request.app.state, "inference", None)
    if inference is None:  # this service serves no model
        return None
    problem: str | None = inference.problem()
    return problem


@router.get(
    "/readyz",
    summary="The catalog is reachable and migrated, the campaign is initialised "
    "(unless MEDAI_SERVE_CAMPAIGN=false), the model is loaded",
    responses={503: {"description": "Not ready; `detail` says what to do"}},
)
def readyz(request: Request, service: ServiceDep) -> JSONResponse:
    # A plain function: FastAPI runs it in a worker thread, off the event loop.
    problem = readiness_problem(service) or _inference_problem(request)
    if problem is not None:
        return JSONResponse({"status": "not-ready", "detail": problem}, status_code=503)
    return JSONResponse({"status": "ready"})
