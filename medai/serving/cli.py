"""``medai serve`` (the web service) and ``medai keys`` (its API keys)."""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medai.cli_support import JsonFlag, console, err_console, fail, plain, print_json, row
from medai.cli_tls import (
    RequireClientCertOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    listener_tls,
    warn_plaintext,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

    from medai.serving.keys import KeyInfo

__all__ = ["keys_app", "register", "serve_command", "worker_app"]

keys_app = typer.Typer(
    help="API keys of the web service (roles: clinician, steward, researcher (browses the "
    "collection: QIDO-RS/WADO-RS), admin; admin may do all; "
    "edge: a site's edge gateway, bound to that site; monitoring: reads /metrics only).",
    no_args_is_help=True,
)


def serve_command(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    body_idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--body-idle-timeout",
            min=0.1,
            help="Seconds an upload may send nothing before it is given up (408). "
            "Default: MEDAI_BODY_IDLE_TIMEOUT, else 60.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Server processes. Each loads its own copy of the model and keeps its own "
            "recent predictions and metrics. Default: MEDAI_SERVE_WORKERS, else 1.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Registered model to serve (models:/NAME@champion); '' for none. "
            "Default: MEDAI_SERVE_MODEL, else chest-xray-triage.",
        ),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Alias to follow. Default: MEDAI_SERVE_ALIAS, else champion."),
    ] = None,
    campaign: Annotated[
        bool | None,
        typer.Option(
            "--campaign/--no-campaign",
            help="Whether this service takes part in a collection campaign; --no-campaign "
            "for inference only (/readyz needs no campaign). Default: MEDAI_SERVE_CAMPAIGN, "
            "else --campaign.",
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size", min=1, help="Most images per forward pass (MEDAI_MAX_BATCH_SIZE)."
        ),
    ] = None,
    max_batch_wait_ms: Annotated[
        float | None,
        typer.Option(
            "--max-batch-wait-ms",
            min=0,
            help="How long an idle batcher waits for more images (MEDAI_MAX_BATCH_WAIT_MS).",
        ),
    ] = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    require_client_cert: RequireClientCertOption = None,
) -> None:
    """Run the web service: inference, STOW-RS for the sites, the dashboard, health checks.

    GET /healthz and /readyz are open. Every other route needs the header
    'Authorization: Bearer <key>' (see `medai keys create`). An inference-only
    service (no campaign) sets MEDAI_SERVE_CAMPAIGN=false: /readyz then needs
    the model, not a campaign.

    Inference: POST one study to /v1/predict with a clinician key
    (Content-Type: application/dicom, or multipart/related for several
    instances). The service loads models:/MODEL@champion from MLflow and
    follows the alias (MEDAI_MODEL_POLL_SECONDS; admins: POST
    /v1/models/reload). API browser: /dashboard/docs once signed in, or
    /openapi.json with a key.

    Dashboard: open http://HOST:PORT/dashboard in a browser and sign in with a
    steward key. Progress as JSON for the monitoring system: GET
    /v1/campaign/progress with a steward key.

    STOW-RS: POST /dicomweb/studies or /dicomweb/studies/{study} with a
    steward key, naming the sending site with ?site=<site id> or the
    header 'Medai-Site: <site id>'. A site's edge gateway sends with its edge
    key (`medai keys create --role edge --site SITE`) and the header
    'Medai-Receipt-Day: YYYY-MM-DD'; it posts heartbeats to /v1/edge/heartbeat
    and reads its receipts at /v1/edge/receipts.

    HTTPS: --tls-cert and --tls-key (or MEDAI_TLS_CERT_FILE and
    MEDAI_TLS_KEY_FILE); --tls-ca and --require-client-cert ask clients for a
    certificate of that CA. Plain HTTP on an address other than loopback is
    warned about (put a TLS proxy in front, or give a certificate).

    Request bodies are limited to MEDAI_MAX_REQUEST_BYTES. Stops on Ctrl-C
    or SIGTERM, letting requests in flight finish (up to a minute).
    """
    import uvicorn
    from pydantic import ValidationError

    from medai.config import Settings, get_settings
    from medai.log_privacy import with_withheld_values
    from medai.serving.access_log import uvicorn_log_config
    from medai.serving.app import create_app

    options: dict[str, Any] = {
        "serve_model": model,
        "serve_alias": alias,
        "serve_campaign": campaign,
        "max_batch_size": max_batch_size,
        "max_batch_wait_ms": max_batch_wait_ms,
        "serve_workers": workers,
        "body_idle_timeout": body_idle_timeout,
    }
    try:  # the options given, over the MEDAI_* environment
        settings = Settings(**{name: value for name, value in options.items() if value is not None})
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from None
    tls = listener_tls(settings, tls_cert, tls_key, tls_ca, require_client_cert)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        # No UIDs from request paths in the access log, no DICOM value in any record.
        "log_config": with_withheld_values(uvicorn_log_config()),
        "timeout_graceful_shutdown": 60,
        # X-Forwarded-* are believed only from the proxies named in MEDAI_FORWARDED_ALLOW_IPS
        # (none by default): otherwise any caller could claim another address, or HTTPS.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        "server_header": False,
    }
    if tls is None:
        warn_plaintext(host, port, "HTTP")
    else:  # uvicorn loads the files itself (in each worker); listener_tls checked them
        import ssl

        common.update(
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
            ssl_ca_certs=str(tls.ca) if tls.ca is not None else None,
            ssl_cert_reqs=(
                ssl.CERT_REQUIRED
                if tls.require_client_cert
                else ssl.CERT_OPTIONAL
                if tls.ca is not None
                else ssl.CERT_NONE
            ),
        )
    if settings.serve_workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # uvicorn's worker processes are started afresh: they get these settings, options
    # included, the one way settings reach another process (Settings.as_environment).
    os.environ.update(settings.as_environment())
    get_settings.cache_clear()
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=settings.serve_workers, **common)


def worker_app() -> FastAPI:
    """The app of one server process of ``medai serve --workers N``, from its environment.

    The factory given to uvicorn: each worker process calls it, and builds its settings
    from the variables :meth:`medai.config.Settings.as_environment` set for it.
    """
    import logging

    from medai.config import get_settings
    from medai.log_privacy import configure_worker
    from medai.serving.app import create_app

    settings = get_settings()
    # A spawned worker: the CLI's handler is in the parent; its own withholds values too.
    configure_worker(logging.getLevelName(settings.log_level))
    return create_app(settings)


def _engine() -> Engine:
    from medai.catalog.db import create_engine_for, upgrade
    from medai.config import get_settings

    engine = create_engine_for(get_settings().resolved_database_url)
    # Keys may come before `medai campaign init` (a collection-free inference service),
    # so these commands set the catalog's schema up themselves.
    upgrade(engine)
    return engine


def _key_dict(info: KeyInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": info.role,
        "prefix": info.prefix,
        "created_at": info.created_at,
        "last_used_at": info.last_used_at,
        "revoked_at": info.revoked_at,
        "site": info.site_id,
    }


@keys_app.command("create")
def create_command(
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="clinician (inference), steward (collection), admin, edge (a site's "
            "edge gateway; needs --site), or monitoring (may read /metrics only).",
        ),
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name", help="Unique name, e.g. site-a-pacs; appears in listings and audit records."
        ),
    ],
    site: Annotated[
        str | None,
        typer.Option(
            "--site",
            help="The campaign site an edge key speaks for (required with --role edge, "
            "refused otherwise).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key, printed once, alone on the last line of stdout.

    Only its sha256 is stored, so it cannot be shown again: hand it to its
    holder over a safe channel now. Clients send it in the header
    'Authorization: Bearer <key>'. With --json the last line is a JSON document
    holding the key under "key".

    An edge key (--role edge --site SITE) may only send SITE's de-identified
    instances (STOW-RS), post its heartbeats and read SITE's receipts.
    """
    from rich.text import Text

    from medai.errors import ApiKeyError
    from medai.serving.keys import create_key

    engine = _engine()
    try:
        created = create_key(engine, name=name, role=role, site_id=site)
    except ApiKeyError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if as_json:
        print_json({**_key_dict(created.info), "key": created.key})
        return
    info = created.info
    err_console().print(
        Text.assemble(
            "created API key ",
            (info.name, "bold"),
            f" (role {info.role}"
            + (f" for site {info.site_id}" if info.site_id else "")
            + f", prefix {info.prefix}). It is shown once, below; "
            "medai keeps only its hash.",
        )
    )
    typer.echo(created.key)


@keys_app.command("list")
def list_command(as_json: JsonFlag = False) -> None:
    """List the API keys: name, role, prefix, created, last used (to the minute), revoked."""
    from rich.table import Table

    from medai.serving.keys import list_keys

    engine = _engine()
    try:
        keys = list_keys(engine)
    finally:
        engine.dispose()
    if as_json:
        print_json([_key_dict(key) for key in keys])
        return
    table = Table(title="API keys (times in UTC)")
    for column in ("name", "role", "prefix", "created", "last used", "revoked"):
        table.add_column(column, no_wrap=column in ("name", "prefix"))

    def when(value: dt.datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"

    for key in keys:
        table.add_row(
            *row(
                key.name,
                f"{key.role} ({key.site_id})" if key.site_id else key.role,
                key.prefix + "...",
                when(key.created_at),
                when(key.last_used_at),
                when(key.revoked_at),
            ),
            style="dim" if key.revoked else None,
        )
    out = console()
    out.print(table)
    if not keys:
        out.print("no keys yet: `medai keys create --role steward --name NAME`")


@keys_app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: requests with it are refused (401) from now on. Cannot be undone."""
    from medai.errors import ApiKeyError
    from medai.serving.keys import revoke_key

    engine = _engine()
    try:
        info, changed = revoke_key(engine, name)
    except ApiKeyError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if as_json:
        print_json({**_key_dict(info), "changed": changed})
    elif changed:
        console().print(plain(f"revoked API key {info.name} ({info.role})"))
    else:
        console().print(plain(f"API key {info.name} was revoked already"))


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``keys`` to the root app."""
    app.command("serve")(serve_command)
    app.add_typer(keys_app, name="keys")
