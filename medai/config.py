"""Settings for every part of medai, read from ``MEDAI_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """All locations and limits medai uses.

    Every path defaults to a place under ``home`` so that one directory holds an
    embedded deployment (SQLite catalog, object store, quarantine, MLflow).
    """

    model_config = SettingsConfigDict(env_prefix="MEDAI_", extra="ignore")

    home: Path = Field(default=Path(".medai"), description="Directory holding all local state.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the catalog; default sqlite:///<home>/catalog.db. "
        "Use postgresql+psycopg://host/db for a multi-site deployment.",
    )
    store_dir: Path | None = Field(default=None, description="Object store root; <home>/store.")
    quarantine_dir: Path | None = Field(
        default=None, description="Quarantine root (raw files, 0700); <home>/quarantine."
    )
    key_file: Path | None = Field(
        default=None,
        description="Campaign pseudonymization key (never stored in the catalog); "
        "<home>/campaign.key.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///<home>/mlflow.db."
    )
    quarantine_retention_days: int = Field(default=90, ge=1)
    max_instance_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="Largest single DICOM instance (or zip member) accepted, in bytes.",
    )
    import_workers: int = Field(default=0, ge=0, description="0 = one per CPU core, plus one.")
    study_quiet_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A study counts as complete once no new instance arrived for this long "
        "(like Orthanc's StableAge).",
    )
    max_request_bytes: int = Field(
        default=1024**3,
        ge=1024,
        description="Largest web request body accepted (a STOW-RS upload), in bytes; "
        "held in memory, never spooled to disk.",
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().absolute()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home / 'catalog.db'}"

    @property
    def resolved_store_dir(self) -> Path:
        return (self.store_dir or self.resolved_home / "store").expanduser().absolute()

    @property
    def resolved_quarantine_dir(self) -> Path:
        return (self.quarantine_dir or self.resolved_home / "quarantine").expanduser().absolute()

    @property
    def resolved_key_file(self) -> Path:
        return (self.key_file or self.resolved_home / "campaign.key").expanduser().absolute()

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.resolved_home / 'mlflow.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use (never at import).

    Tests that change ``MEDAI_*`` variables call ``get_settings.cache_clear()``.
    """
    return Settings()
