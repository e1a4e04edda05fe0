"""``medai serve`` (the web service) and ``medai keys`` (its API keys)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["keys_app", "register", "serve_command"]

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
) -> None:
    """Run the web service: STOW-RS for the sites, the campaign dashboard, health checks.

    GET /healthz and /readyz are open. Every other route needs the header
    'Authorization: Bearer <key>' (see `medai keys create`).

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

    from medai.config import get_settings
    from medai.serving.access_log import uvicorn_log_config
    from medai.serving.app import create_app

    app = create_app(get_settings(), body_idle_timeout=body_idle_timeout)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=uvicorn_log_config(),  # no UIDs from request paths in the access log
        timeout_graceful_shutdown=60,
        # A proxy in front must not make every caller look like the proxy in the log.
        proxy_headers=False,
        server_header=False,
    )


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

    from medai.serving.keys import ApiKeyError, create_key

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

    from medai.serving.keys import ApiKeyError, revoke_key

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
