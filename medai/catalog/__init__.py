"""The catalog: SQLAlchemy models, engines and Alembic migrations (SQLite or PostgreSQL)."""

from medai.catalog.db import alembic_config, create_engine_for, session_factory, upgrade
from medai.catalog.models import (
    AuditRecord,
    Base,
    Campaign,
    ImportRun,
    IngestEvent,
    Instance,
    Patient,
    QuarantineEntry,
    Series,
    Site,
    Study,
)
from medai.catalog.writes import get_or_create_id, insert_ignore

__all__ = [
    "AuditRecord",
    "Base",
    "Campaign",
    "ImportRun",
    "IngestEvent",
    "Instance",
    "Patient",
    "QuarantineEntry",
    "Series",
    "Site",
    "Study",
    "alembic_config",
    "create_engine_for",
    "get_or_create_id",
    "insert_ignore",
    "session_factory",
    "upgrade",
]
