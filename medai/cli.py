"""The ``medai`` command: the root typer app; each part of medai registers its own sub-app."""

from __future__ import annotations

import logging
import os

import typer
from rich.console import Console
from rich.logging import RichHandler

__all__ = ["app", "main"]

app = typer.Typer(
    name="medai",
    help="Imaging-AI pilot toolkit: collect and de-identify DICOM, train models, serve them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

err_console = Console(stderr=True)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging."),
) -> None:
    """Configure logging once for every command (the library itself only has a NullHandler)."""
    level = (
        logging.DEBUG
        if verbose
        else logging.getLevelName(os.environ.get("MEDAI_LOG_LEVEL", "WARNING").upper())
    )
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def _register_subapps() -> None:
    # Each part exposes register(app); imports here are light (commands import heavy
    # modules inside their bodies so that --help stays instant).
    from medai import demo
    from medai.collection import cli as collect_cli
    from medai.collection.campaign import cli as campaign_cli
    from medai.collection.labels import cli as labels_cli
    from medai.dicom import cli as dicom_cli
    from medai.serving import cli as serving_cli
    from medai.snapshots import cli as snapshot_cli
    from medai.training import cli as training_cli

    dicom_cli.register(app)
    demo.register(app)
    campaign_cli.register(app)
    collect_cli.register(app)
    labels_cli.register(app)
    snapshot_cli.register(app)
    serving_cli.register(app)
    training_cli.register(app)


_register_subapps()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
