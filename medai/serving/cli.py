"""``medai serve`` (the web service) and ``medai keys`` (its API keys)."""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

__all__ = ["keys_app", "register", "serve_command", "worker_app"]

# How `medai serve` tells its worker processes what is not a setting.
WORKERS_ENV = "MEDAI_SERVE_WORKERS"
IDLE_TIMEOUT_ENV = "MEDAI_SERVE_BODY_IDLE_TIMEOUT"

keys_app = typer.Typer(
    help="API keys of the web service (roles: clinician, steward, admin; admin may do all).",
    no_args_is_help=True,
)

# Exit status for a problem the user can fix, as the other medai commands use.
EXIT_USER_ERROR = 2


def _fail(message: str) -> NoReturn:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


def serve_command(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    body_idle_timeout: Annotated[
        float,
        typer.Option(
            "--body-idle-timeout",
            min=0.1,
            help="Seconds an upload may send nothing before it is given up (408).",
        ),
    ] = 60.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Server processes. Each loads its own copy of the model and keeps its own "
            "recent predictions and metrics.",
        ),
    ] = 1,
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
) -> None:
    """Run the web service: inference, STOW-RS for the sites, the dashboard, health checks.

    GET /healthz and /readyz are open. Every other route needs the header
    'Authorization: Bearer <key>' (see `medai keys create`).

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
    header 'Medai-Site: <site id>'.

    Request bodies are limited to MEDAI_MAX_REQUEST_BYTES. Stops on Ctrl-C
    or SIGTERM, letting requests in flight finish (up to a minute).
    """
    import uvicorn
    from pydantic import ValidationError

    from medai.config import Settings, get_settings
    from medai.serving.access_log import uvicorn_log_config

    options = {
        "MEDAI_SERVE_MODEL": model,
        "MEDAI_SERVE_ALIAS": alias,
        "MEDAI_MAX_BATCH_SIZE": max_batch_size,
        "MEDAI_MAX_BATCH_WAIT_MS": max_batch_wait_ms,
    }
    # Options travel as environment variables: worker processes read their settings there.
    for name, value in options.items():
        if value is not None:
            os.environ[name] = str(value)
    os.environ[WORKERS_ENV] = str(workers)
    os.environ[IDLE_TIMEOUT_ENV] = str(body_idle_timeout)
    get_settings.cache_clear()
    try:
        Settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}")
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": uvicorn_log_config(),  # no UIDs from request paths in the access log
        "timeout_graceful_shutdown": 60,
        # A proxy in front must not make every caller look like the proxy in the log.
        "proxy_headers": False,
        "server_header": False,
    }
    if workers == 1:
        uvicorn.run(worker_app(), **common)
    else:
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **common)


def worker_app() -> FastAPI:
    """The app of one server process, from the settings and options in the environment.

    The factory ``medai serve --workers N`` gives uvicorn: each worker process calls it.
    """
    import logging

    from medai.config import get_settings
    from medai.serving.app import create_app

    root = logging.getLogger()
    if not root.handlers:  # a spawned worker: the CLI's handler is in the parent
        level = os.environ.get("MEDAI_LOG_LEVEL", "WARNING").upper()
        logging.basicConfig(level=logging.getLevelName(level), format="%(name)s: %(message)s")
    timeout = float(os.environ.get(IDLE_TIMEOUT_ENV, "60") or 60)
    return create_app(get_settings(), body_idle_timeout=timeout)


def _engine() -> Engine:
    from medai.catalog.db import create_engine_for, upgrade
    from medai.config import get_settings

    engine = create_engine_for(get_settings().resolved_database_url)
    upgrade(engine)  # the api_keys table may come before `medai campaign init`
    return engine


@keys_app.command("create")
def create_command(
    role: Annotated[
        str, typer.Option("--role", help="clinician (inference), steward (collection) or admin.")
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name", help="Unique name, e.g. site-a-pacs; appears in listings and audit records."
        ),
    ],
) -> None:
    """Create an API key, printed once, alone on the last line of stdout.

    Only its sha256 is stored, so it cannot be shown again: hand it to its
    holder over a safe channel now. Clients send it in the header
    'Authorization: Bearer <key>'.
    """
    from rich.console import Console

    from medai.errors import ApiKeyError
    from medai.serving.keys import create_key

    engine = _engine()
    try:
        created = create_key(engine, name=name, role=role)
    except ApiKeyError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    Console(stderr=True).print(
        f"created API key [bold]{created.info.name}[/] (role {created.info.role}, prefix "
        f"{created.info.prefix}). It is shown once, below; medai keeps only its hash.",
        highlight=False,
    )
    typer.echo(created.key)


@keys_app.command("list")
def list_command() -> None:
    """List the API keys: name, role, prefix, created, last used (to the minute), revoked."""
    from rich.console import Console
    from rich.table import Table

    from medai.serving.keys import list_keys

    engine = _engine()
    try:
        keys = list_keys(engine)
    finally:
        engine.dispose()
    table = Table(title="API keys (times in UTC)")
    for column in ("name", "role", "prefix", "created", "last used", "revoked"):
        table.add_column(column, no_wrap=column in ("name", "prefix"))

    def when(value: dt.datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"

    for key in keys:
        table.add_row(
            key.name,
            key.role,
            key.prefix + "...",
            when(key.created_at),
            when(key.last_used_at),
            when(key.revoked_at),
            style="dim" if key.revoked else None,
        )
    console = Console()
    console.print(table)
    if not keys:
        console.print("no keys yet: `medai keys create --role steward --name NAME`")


@keys_app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
) -> None:
    """Revoke a key: requests with it are refused (401) from now on. Cannot be undone."""
    from rich.console import Console

    from medai.errors import ApiKeyError
    from medai.serving.keys import revoke_key

    engine = _engine()
    try:
        info, changed = revoke_key(engine, name)
    except ApiKeyError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    if changed:
        Console().print(f"revoked API key {info.name} ({info.role})", highlight=False)
    else:
        Console().print(f"API key {info.name} was revoked already", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``keys`` to the root app."""
    app.command("serve")(serve_command)
    app.add_typer(keys_app, name="keys")
