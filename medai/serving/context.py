"""What the web service shares between requests: settings, the catalog engine, pipelines.

One :class:`Service` lives in ``app.state.service`` for the life of the app; routes get
it (or its settings and engine) through the aliases of :mod:`medai.serving.deps`.
Nothing here is per-request global state: the ingest pipeline a request uses is chosen
by the caller's audit actor.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from medai.catalog.db import create_engine_for
from medai.ops.security import SecurityMonitor
from medai.serving.sessions import DashboardSessions

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from medai.collection.pipeline import IngestPipeline
    from medai.config import Settings

__all__ = ["Service"]


class Service:
    """The settings and the shared resources of one app.

    The catalog engine is created with the app (it connects on first use). The ingest
    pipeline is built on first use, not at start-up, so the service can start (and
    answer ``/readyz`` with why it is not ready) before the campaign is initialised.
    A campaign re-initialised with other de-identification options needs a restart.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = create_engine_for(settings.resolved_database_url)
        self.dashboard_sessions = DashboardSessions.for_settings(settings)
        # Failed authentication: recorded (repeats folded), counted, throttled per source.
        self.security = SecurityMonitor.for_settings(settings)
        self._lock = threading.Lock()
        self._base: IngestPipeline | None = None
        self._pipelines: dict[str, IngestPipeline] = {}

    def pipeline(self, actor: str) -> IngestPipeline:
        """The campaign's ingest pipeline whose audit records name ``actor``.

        Pipelines of different actors share the engine, store, quarantine and
        de-identifier; only the actor differs, so concurrent requests of different
        callers never see each other's actor. Call it from a worker thread: the first
        call reads the catalog and the key file.

        Raises
        ------
        CampaignError, KeyFileError
            When the campaign is not initialised, or its key file is missing.
        """
        from medai.collection.pipeline import IngestPipeline

        with self._lock:
            if self._base is None:
                self._base = IngestPipeline.from_settings(self.settings)
            pipeline = self._pipelines.get(actor)
            if pipeline is None:
                base = self._base
                pipeline = IngestPipeline(
                    engine=base.engine,
                    store=base.store,
                    quarantine=base.quarantine,
                    deidentifier=base.deidentifier,
                    max_instance_bytes=base.max_instance_bytes,
                    max_inflate_ratio=base.max_inflate_ratio,
                    actor=actor,
                )
                self._pipelines[actor] = pipeline
            return pipeline

    def close(self) -> None:
        """Release the database connections (at app shutdown)."""
        with self._lock:
            if self._base is not None:
                self._base.engine.dispose()
            self._base = None
            self._pipelines.clear()
        self.engine.dispose()
