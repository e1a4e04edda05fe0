"""``medai doctor``: check a deployment and print what to fix."""

from __future__ import annotations

from typing import Annotated

import typer

from medai.cli_support import EXIT_PROBLEM, JsonFlag

__all__ = ["doctor_command", "register"]

_STYLES = {"ok": "green", "warning": "yellow", "problem": "bold red", "skipped": "dim"}


def doctor_command(
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 on warnings too, not only on problems."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check this deployment: permissions, the campaign key, listeners, backups, the disk.

    Also the audit anchor's age, the catalog (reachable, migrated) and the clock. Each check
    prints ok, warning or problem (skipped when it needs what is missing) and, unless all is
    well, what to do. Reads only: it changes nothing. Exit status: 0 when no check found a
    problem (warnings allowed; with --strict none either), 1 otherwise.
    """
    from rich.text import Text

    from medai.cli_support import console, print_json
    from medai.config import get_settings
    from medai.ops.doctor import run_checks

    report = run_checks(get_settings())
    if as_json:
        print_json(report.as_json())
    else:
        out = console()
        width = max(len(check.name) for check in report.checks)
        for check in report.checks:
            out.print(
                Text.assemble(
                    (f"{check.status:<8}", _STYLES[check.status]),
                    f" {check.name:<{width}}  ",
                    check.summary,
                ),
                soft_wrap=True,
            )
            if check.remedy:
                out.print(Text(f"{'':<8} {'':<{width}}  → {check.remedy}"), soft_wrap=True)
        if report.problems or report.warnings:
            plural = {1: ""}
            out.print(
                Text.assemble(
                    (
                        f"{report.problems} problem{plural.get(report.problems, 's')}",
                        "bold red" if report.problems else "",
                    ),
                    ", ",
                    (
                        f"{report.warnings} warning{plural.get(report.warnings, 's')}",
                        "yellow" if report.warnings else "",
                    ),
                )
            )
        else:
            out.print(Text("all checks passed", "bold green"))
    if report.problems or (strict and report.warnings):
        raise typer.Exit(EXIT_PROBLEM)


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to the root app."""
    app.command("doctor")(doctor_command)
