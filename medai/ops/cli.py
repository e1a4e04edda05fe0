"""``medai backup``, ``medai security`` and ``medai doctor``: each lives in its own module."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the operations commands to the root ``medai`` app."""
    from medai.ops import backup_cli, doctor_cli, security_cli

    backup_cli.register(app)
    security_cli.register(app)
    doctor_cli.register(app)
