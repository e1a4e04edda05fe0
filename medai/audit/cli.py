"""``medai audit verify``: recompute the hash chain of the audit log that every part writes."""

from __future__ import annotations

import typer

from medai.cli_support import EXIT_PROBLEM, JsonFlag

__all__ = ["audit_app", "register"]

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_app.command("verify")
def verify_command(as_json: JsonFlag = False) -> None:
    """Recompute the audit log's hash chain; exit 1 and name the first bad record if edited."""
    from rich.text import Text

    from medai.audit import verify_audit_chain
    from medai.cli_support import (
        catalog_session,
        console,
        err_console,
        print_json,
        require_campaign,
    )

    # The chain may start before the campaign (API keys are audited): a schema is enough.
    require_campaign(campaign=False)
    with catalog_session() as session:
        report = verify_audit_chain(session)
    if as_json:
        print_json(report)
    elif report.ok:
        console().print(
            Text.assemble(("OK", "bold green"), f": {report.records} audit records, chain intact")
        )
    else:
        err_console().print(
            Text.assemble(
                ("audit chain broken", "bold red"),
                f" at record {report.first_bad_seq}: {report.problem}",
            )
        )
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEM)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the root app."""
    app.add_typer(audit_app, name="audit")
