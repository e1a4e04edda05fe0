"""Settings for every part of medai, read from ``MEDAI_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, StringConstraints, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings"]

PYDICOM_UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""pydicom's UID root (``pydicom.uid.PYDICOM_ROOT_UID``), refused as ``org_uid_root``."""


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
    gate_margin: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Promotion gate: a candidate's AUROC minus the champion's, on their shared "
        "test cases, must have a lower confidence bound above -margin for every label.",
    )
    gate_site_min_positives: int = Field(
        default=10,
        ge=1,
        description="Promotion gate: a site's floor is checked where its test set has at least "
        "this many positive cases of a label.",
    )
    gate_site_floor: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Promotion gate: the lower AUROC confidence bound each such site must reach "
        "(never above the run's own gate).",
    )
    quarantine_retention_days: int = Field(default=90, ge=1)
    max_instance_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="Largest single DICOM instance (or zip member) accepted, in bytes.",
    )
    max_inflate_ratio: float = Field(
        default=200.0,
        ge=1.0,
        description="A deflated data set or a zip member may inflate to at most this many "
        "times its compressed size (beyond 8 MiB); past it, inflation stops and the input "
        "is quarantined as too-large, holding only the bytes received (a decompression bomb).",
    )
    max_zip_members: int = Field(
        default=100_000,
        ge=1,
        description="Most members one zip file may hold; a larger zip is not opened, and is "
        "counted as one input quarantined as too-large (nothing of it kept).",
    )
    import_workers: int = Field(default=0, ge=0, description="0 = one per CPU core, plus one.")
    log_level: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True,
            to_upper=True,
            pattern=r"(?i)^(debug|info|warning|error|critical)$",
        ),
    ] = Field(
        default="WARNING",
        description="Logging level of the medai command and the web service's workers "
        "(DEBUG, INFO, WARNING, ERROR); `medai -v` means DEBUG.",
    )
    pull_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for `medai collect pull` (instead of --token, so it stays "
        "out of the shell history).",
    )
    study_quiet_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A study counts as complete once no new instance arrived for this long "
        "(like Orthanc's StableAge).",
    )
    site_quiet_hours: float = Field(
        default=24.0,
        gt=0,
        description="A site whose campaign is running is silent once nothing was heard from "
        "it (no instance received, no edge heartbeat) for this many hours.",
    )
    max_request_bytes: int = Field(
        default=1024**3,
        ge=1024,
        description="Largest web request body accepted (a STOW-RS upload), in bytes; "
        "held in memory, never spooled to disk.",
    )
    body_idle_timeout: float = Field(
        default=60.0,
        ge=0.1,
        description="Seconds an upload to the web service may send nothing before it is "
        "given up (408), so a dead link cannot hold memory or a graceful stop for ever.",
    )
    body_timeout: float = Field(
        default=600.0,
        ge=0.1,
        description="Seconds a whole upload to the web service may take to arrive, however "
        "steadily it trickles in; past it, it is given up (408) and nothing of it is recorded.",
    )
    max_stow_parts: int = Field(
        default=1000,
        ge=1,
        description="Most instances (parts) in one STOW-RS request; a request with more is "
        "refused whole (413) before any part is looked at.",
    )
    serve_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes of `medai serve`; each loads its own copy of the model and "
        "keeps its own recent predictions and metrics.",
    )
    dashboard_session_hours: float = Field(
        default=8.0,
        gt=0,
        le=24 * 7,
        description="How long a dashboard sign-in lasts; then the steward signs in again.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Addresses of a TLS-terminating proxy in front of `medai serve` (comma-"
        "separated IPs or networks) whose X-Forwarded-Proto and X-Forwarded-For are believed, "
        "so the dashboard's cookie is Secure behind it; empty: no proxy header is believed.",
    )
    # NoDecode: the variable is comma-separated origins, not JSON (see _split_origins).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Exact origins (scheme://host[:port], comma-separated) of browser DICOMweb "
        "viewers allowed to call /dicomweb from another origin (CORS); empty: no CORS headers, "
        "browsers refuse cross-origin calls. '*' is refused: these routes carry bearer keys.",
    )

    # -- TLS of the listeners (medai.tls): `collect listen`, `edge run`, `serve` ----------
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of `medai collect listen`, `medai edge run` and "
        "`medai serve`; with MEDAI_TLS_KEY_FILE they speak DICOM TLS / HTTPS only "
        "(--tls-cert wins).",
    )
    tls_key_file: Path | None = Field(
        default=None,
        description="The unencrypted PEM private key of MEDAI_TLS_CERT_FILE (mode 0600).",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificate(s) signing the clients' certificates: clients are "
        "asked for one and it is verified when given.",
    )
    tls_require_client_cert: bool = Field(
        default=False,
        description="Refuse a TLS client without a certificate signed by MEDAI_TLS_CA_FILE.",
    )

    # -- backups (medai.ops.backup) --------------------------------------------------------
    backup_stale_hours: float = Field(
        default=26.0,
        gt=0,
        description="The last backup (`medai backup create`, audited as backup.created) is "
        "stale after this many hours: `medai security status` and `medai doctor` say so "
        "(26: a nightly backup with two hours to spare).",
    )

    # -- security monitoring (medai.ops.security) -----------------------------------------
    auth_failures_per_minute: int = Field(
        default=20,
        ge=0,
        description="Failed authentications (wrong, malformed or revoked API keys) one source "
        "address may make in a minute; past it the address is answered 429 with Retry-After "
        "for a minute, even with a right key. 0: no limit.",
    )
    quarantine_spike_factor: float = Field(
        default=3.0,
        gt=0,
        description="A day's quarantined count of a site and reason is a spike when it is "
        "more than this many times that pair's mean daily count of the 14 days before.",
    )
    quarantine_spike_min: int = Field(
        default=10,
        ge=1,
        description="The fewest quarantined inputs of a site and reason in a day that can be "
        "a spike (a quiet site's first few rejections are not).",
    )

    # -- `medai doctor` (medai.ops.doctor) ------------------------------------------------
    audit_anchor_stale_hours: float = Field(
        default=168.0,
        gt=0,
        description="`medai doctor` warns when the audit chain's head was last anchored "
        "(`medai audit anchor`) longer ago than this.",
    )
    min_free_disk_gib: float = Field(
        default=5.0,
        ge=0,
        description="`medai doctor` warns when the store's filesystem has less free space "
        "than this (or less than 10 % of it).",
    )

    # -- the hospital-side edge gateway (medai.edge) -------------------------------------
    edge_batch_instances: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Most instances the edge forwards to the centre in one STOW-RS request.",
    )
    edge_batch_bytes: int = Field(
        default=32 * 1024**2,
        ge=1024,
        description="Most bytes of instances the edge forwards in one STOW-RS request (a "
        "larger instance travels alone).",
    )
    edge_bandwidth_bytes_per_s: int = Field(
        default=0,
        ge=0,
        description="Upload cap of the edge's forwarder, in bytes per second (0: unlimited).",
    )
    edge_windows: str = Field(
        default="",
        description='Local times the edge forwards in, e.g. "22:00-06:00" or '
        '"12:00-13:00,22:00-06:00"; empty: always.',
    )
    edge_heartbeat_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often the edge posts its heartbeat (outbox, counts, receipts) to the "
        "centre.",
    )
    edge_backoff_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait between two attempts of the edge's forwarder after failures "
        "(exponential backoff with jitter up to this).",
    )
    kit_passphrase: SecretStr | None = Field(
        default=None,
        description="Passphrase of a site kit, for `medai campaign site-kit` and `medai edge "
        "init` run by scripts (else --passphrase-file or a hidden prompt).",
    )

    # -- the inference service (medai.serving.inference) ---------------------------------
    serve_model: str = Field(
        default="chest-xray-triage",
        description="Registered MLflow model the inference service serves; empty for none "
        "(a collection-only service).",
    )
    serve_campaign: bool = Field(
        default=True,
        description="Whether this service takes part in a collection campaign (STOW-RS from "
        "the sites, the campaign dashboard): /readyz then also needs the campaign initialised "
        "and its key file; false for an inference-only deployment, ready once the catalog "
        "(API keys, audit) is migrated and the model loaded.",
    )
    org_uid_root: (
        Annotated[
            str,
            StringConstraints(
                strip_whitespace=True,
                max_length=40,
                # DICOM PS3.5 9.1: numeric components, no leading zero, dot separated.
                pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$",
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="Your organisation's registered DICOM UID root (digits and dots, at most "
        "40 characters) under which the service makes the UIDs of its SRs; unset: UUID-derived "
        "2.25.<n> UIDs (ISO/IEC 9834-8), valid without a registered root.",
    )
    serve_alias: str = Field(
        default="champion",
        min_length=1,
        description="Alias of the served model's version (models:/<model>@<alias>).",
    )
    model_poll_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often the service checks whether the alias moved to another "
        "version (0: never; POST /v1/models/reload still does).",
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=1024, description="Most images in one forward pass."
    )
    max_batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="How long an idle batcher waits for more images before a forward pass.",
    )
    inference_threads: int = Field(
        default=0,
        ge=0,
        description="The forward pass's CPU threads per service process (torch and ONNX "
        "Runtime); 0: half the CPU cores of each worker process (the other half decode "
        "the next requests meanwhile).",
    )
    inference_device: str | None = Field(
        default=None, description="torch device, e.g. cpu or cuda:1; default cuda when present."
    )
    inference_backend: str = Field(
        default="auto",
        pattern=r"^(auto|torch|onnx|int8|bfloat16)$",
        description="What runs the forward pass: onnx (ONNX Runtime, CPU), int8 (the "
        "version's int8 ONNX model, made at training with [export] int8 = true), bfloat16 "
        "(torch bfloat16 autocast on a CPU with native bfloat16 units, for a version whose "
        "training accepted it with [export] bfloat16 = true), torch, or auto (the fastest "
        "of those that agree with the torch network at load). A backend that fails its "
        "check at load falls back (int8, bfloat16: as auto; onnx: to torch), and the log "
        "says why.",
    )
    max_predict_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024,
        description="Largest POST /v1/predict body (one study), in bytes; held in memory only.",
    )
    prediction_ttl_seconds: float = Field(
        default=900.0,
        gt=0,
        description="How long a prediction's heatmap and report stay available (in memory).",
    )
    max_kept_predictions: int = Field(
        default=256, ge=1, description="Most predictions kept in memory for heatmaps and reports."
    )
    drift_window: int = Field(
        default=200,
        ge=2,
        description="Monitoring: the last N predictions (per site, and overall) compared "
        "with the served model's training reference.",
    )
    drift_min_samples: int = Field(
        default=30,
        ge=2,
        description="Monitoring: fewer predictions than this in a window give status unknown.",
    )
    drift_warn_psi: float = Field(
        default=0.1, gt=0, description="Monitoring: a feature's PSI from which it warns."
    )
    drift_alert_psi: float = Field(
        default=0.25, gt=0, description="Monitoring: a feature's PSI from which it drifts."
    )
    drift_p_value: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Monitoring: a shift counts only when its two-sample test rejects at "
        "this level (divided by the number of features tested).",
    )
    monitoring_retention_days: int = Field(
        default=90,
        ge=1,
        description="Monitoring: days a served prediction's record (drift windows, what "
        "feedback needs) is kept; older ones without clinician feedback are deleted, "
        "hourly. Records with feedback stay (they are exported as labels).",
    )
    models_dir: Path = Field(
        default=Path("models"),
        description="Folder of the model folders (<models_dir>/<model>/MODEL_CARD.md).",
    )
    serving_key_file: Path | None = Field(
        default=None,
        description="Key of the keyed hash (HMAC-SHA256) by which inference audit records "
        "name studies; <home>/serving.key, created on first start.",
    )

    @field_validator("org_uid_root", mode="before")
    @classmethod
    def _empty_is_unset(cls, root: object) -> object:
        # `MEDAI_ORG_UID_ROOT=` in an env file means "not set", as for the other settings.
        return None if isinstance(root, str) and not root.strip() else root

    @field_validator("org_uid_root")
    @classmethod
    def _not_pydicom_root(cls, root: str | None) -> str | None:
        # pydicom's root is shared by everyone who calls generate_uid(): not an organisation's.
        if root is not None and (root + ".").startswith(PYDICOM_UID_ROOT):
            raise ValueError(
                f"{PYDICOM_UID_ROOT}* is pydicom's shared UID root, not your organisation's: "
                "set your registered root, or leave MEDAI_ORG_UID_ROOT unset for 2.25 UIDs"
            )
        return root

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, origins: object) -> object:
        # From the environment: `a,b` (`MEDAI_CORS_ORIGINS=` is none), as in medai.env.
        if isinstance(origins, str):
            return tuple(part.strip() for part in origins.split(",") if part.strip())
        return origins

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_exact_origin(origin) for origin in origins)

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
    def resolved_serving_key_file(self) -> Path:
        return (self.serving_key_file or self.resolved_home / "serving.key").expanduser().absolute()

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir.expanduser().absolute()

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.resolved_home / 'mlflow.db'}"

    def as_environment(self) -> dict[str, str]:
        """These settings as the ``MEDAI_*`` variables that rebuild them in another process.

        The one way settings reach a process medai starts: ``medai serve --workers N``
        puts them in the environment its uvicorn worker processes inherit, each of which
        builds them again with :func:`get_settings`. Unset optional settings (None) are
        left out, so their defaults stay derived from ``home``; secrets are written in
        clear, as the environment they came from held them.

        Examples
        --------
        >>> Settings(home=Path("/srv/medai")).as_environment()["MEDAI_HOME"]
        '/srv/medai'
        """
        environment: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):  # cors_origins: read back comma-separated
                value = ",".join(value)
            environment[f"MEDAI_{name.upper()}"] = str(value)
        return environment


def _exact_origin(origin: str) -> str:
    """``origin`` as a browser's ``Origin`` header spells it, or ValueError saying why not."""
    if "*" in origin:
        # A wildcard would let any web page read these routes' answers with a key it holds.
        raise ValueError(
            f"{origin!r}: wildcards are refused in MEDAI_CORS_ORIGINS, because the /dicomweb "
            "routes carry bearer keys to identifiable-adjacent data; list each viewer's exact "
            "origin, e.g. https://viewer.hospital.example"
        )
    try:
        parts = urlsplit(origin)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as error:
        raise ValueError(f"{origin!r} is not a URL origin: {error}") from None
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path
        or parts.query
        or parts.fragment
        or origin.endswith(("?", "#"))
    ):
        raise ValueError(
            f"{origin!r} is not an origin: write scheme://host[:port] with no path, not even a "
            "trailing /, e.g. https://viewer.hospital.example or http://localhost:3000"
        )
    if port == 0:
        raise ValueError(f"{origin!r}: port 0 is no port a browser sends from")
    # Browsers send the scheme and host in lower case and no default port: compare like
    # with like, or the listed origin would silently never match.
    scheme, host = parts.scheme.lower(), parts.hostname
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use (never at import).

    Tests that change ``MEDAI_*`` variables call ``get_settings.cache_clear()``.
    """
    return Settings()
