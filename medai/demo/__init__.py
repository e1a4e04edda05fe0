"""``medai demo``: the whole story on embedded defaults, from hospital pushes to a diagnosis."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the root ``medai`` app."""
    from medai.demo.command import demo_command

    app.command("demo")(demo_command)
