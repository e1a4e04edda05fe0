"""``python -m medai.training MODEL_DIR``: ``medai train`` as a module, for ``torchrun -m``."""

from __future__ import annotations

import typer

from medai.training.cli import train_command


def main() -> None:
    """Run ``medai train`` with this process's arguments (``--help`` for them)."""
    app = typer.Typer(add_completion=False)
    app.command()(train_command)
    app(prog_name="python -m medai.training")


if __name__ == "__main__":
    main()
