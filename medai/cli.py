"""The ``medai`` command: the root typer app; each part of medai registers its own sub-app."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="medai",
    help="Imaging-AI pilot toolkit: collect and de-identify DICOM, train models, serve them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False,
) -> None:
    """Configure logging once for every command (the library itself only has a NullHandler)."""
    from pydantic import ValidationError
    from rich.logging import RichHandler

    from medai.cli_support import err_console, fail
    from medai.config import get_settings
    from medai.log_privacy import install as withhold_dicom_values

    try:
        level = "DEBUG" if verbose else get_settings().log_level
    except ValidationError as exc:
        # A bad MEDAI_* variable: say which, before any command trips over it.
        raise fail(f"invalid settings: {exc}", "Fix the MEDAI_* variable(s) named above.") from None
    logging.basicConfig(
        level=logging.getLevelName(level),
        format="%(message)s",
        handlers=[RichHandler(console=err_console(), show_path=False)],
        force=True,
    )
    withhold_dicom_values()  # no DICOM value in any log record or warning, at any level


def _register_subapps() -> None:
    # Each part exposes register(app); imports here are light (commands import heavy
    # modules inside their bodies so that --help stays instant).
    from medai import demo
    from medai.audit import cli as audit_cli
    from medai.collection import cli as collect_cli
    from medai.collection.campaign import cli as campaign_cli
    from medai.collection.labels import cli as labels_cli
    from medai.dicom import cli as dicom_cli
    from medai.edge import cli as edge_cli
    from medai.ops import cli as ops_cli
    from medai.serving import cli as serving_cli
    from medai.snapshots import cli as snapshot_cli
    from medai.training import cli as training_cli

    dicom_cli.register(app)
    demo.register(app)
    campaign_cli.register(app)
    collect_cli.register(app)
    audit_cli.register(app)
    labels_cli.register(app)
    snapshot_cli.register(app)
    serving_cli.register(app)
    training_cli.register(app)
    edge_cli.register(app)  # also adds `campaign site-kit` and `collect reconcile`
    ops_cli.register(app)  # backup, security, doctor


_register_subapps()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
