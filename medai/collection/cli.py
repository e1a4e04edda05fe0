"""``medai collect``: the steward's accounting commands (verify, quarantine), and the receivers'.

The receivers' own commands (``import``, ``listen``, ``pull``) live beside them in
:mod:`medai.collection.receivers.cli`; this module gathers them under ``medai collect``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from medai.cli_support import (
    EXIT_PROBLEM,
    JsonFlag,
    console,
    err_console,
    plain,
    print_json,
    require_campaign,
    row,
)
from medai.collection import quarantine_cli
from medai.collection.receivers import cli as receivers_cli

if TYPE_CHECKING:
    from medai.collection.accounting import VerifyReport

__all__ = ["collect_app", "register"]

collect_app = typer.Typer(
    help="Receive DICOM from the campaign's sites and account for every file.",
    no_args_is_help=True,
)
receivers_cli.register(collect_app)
quarantine_cli.register(collect_app)


@collect_app.command("verify")
def verify_command(
    rehash: Annotated[
        bool,
        typer.Option("--rehash/--no-rehash", help="Re-hash every stored file (slower, thorough)."),
    ] = True,
    collect: Annotated[
        bool,
        typer.Option("--collect", help="Delete orphan store files (left by interrupted ingests)."),
    ] = False,
    min_age: Annotated[
        float, typer.Option("--min-age", help="Only collect orphans older than this many seconds.")
    ] = 3600.0,
    as_json: JsonFlag = False,
) -> None:
    """Prove the accounting: inputs = stored + duplicate + quarantined; every row has its file."""
    from medai.cli_support import fail
    from medai.collection.accounting import collect_orphans, verify_collection
    from medai.errors import MedaiError

    require_campaign()
    try:
        with err_console().status("checking the catalog, the store and the quarantine"):
            report = verify_collection(rehash=rehash)
    except MedaiError as exc:
        raise fail(exc) from None
    removed = collect_orphans(report, min_age_seconds=min_age) if collect else None
    if as_json:
        print_json(_verify_dict(report, removed))
    else:
        _print_verify(report, removed)
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEM)


def _verify_dict(report: VerifyReport, removed: int | None) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "inputs": report.inputs,
        "events": report.events,
        "instances": report.instances,
        "quarantine_entries": report.quarantine_entries,
        "import_runs": len(report.runs),
        "interrupted_runs": [
            {"run_id": r.run_id, "site": r.site_id, "events": r.events, "inputs": r.inputs_found}
            for r in report.interrupted_runs
        ],
        "orphan_files": len(report.orphan_files),
        "orphans_collected": removed,
        "problems": list(report.problems),
    }


def _print_verify(report: VerifyReport, removed: int | None) -> None:
    out = console()
    table = Table(title="Collection accounting")
    table.add_column("")
    table.add_column("count", justify="right")
    for outcome in ("stored", "duplicate", "quarantined"):
        table.add_row(*row(f"{outcome} events", report.events.get(outcome, 0)))
    table.add_row(plain("inputs", "bold"), plain(report.inputs, "bold"))
    table.add_row(*row("instance rows", report.instances))
    table.add_row(*row("quarantine entries", report.quarantine_entries))
    table.add_row(*row("import runs", len(report.runs)))
    table.add_row(*row("orphan store files", len(report.orphan_files)))
    out.print(table)
    for run in report.interrupted_runs:
        out.print(
            plain(
                f"import run {run.run_id} ({run.site_id}) was interrupted after "
                f"{run.events} of {run.inputs_found} inputs: run the import again "
                "(it is harmless).",
                "yellow",
            )
        )
    if removed is not None:
        out.print(f"collected {removed} orphan store file(s)")
    elif report.orphan_files:
        out.print("orphan files can be removed with `medai collect verify --collect`")
    if report.ok:
        out.print(
            Text.assemble(
                ("OK", "bold green"), ": every input is stored, a duplicate or quarantined"
            )
        )
        return
    for problem in report.problems:
        err_console().print(Text.assemble(("problem:", "red"), f" {problem}"))


def register(app: typer.Typer) -> None:
    """Add ``collect`` to the root app."""
    app.add_typer(collect_app, name="collect")
