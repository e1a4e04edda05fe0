"""``medai collect`` (import, verify) and ``medai audit verify``: the data steward's commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from medai.collection.receivers.pull_cli import pull_command

__all__ = ["audit_app", "collect_app", "register"]

console = Console()
err_console = Console(stderr=True)

collect_app = typer.Typer(
    help="Receive DICOM from the campaign's sites and account for every file.",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@collect_app.command("import")
def import_command(
    path: Path = typer.Argument(..., help="A folder, a zip file or a DICOM file to import."),
    site: str = typer.Option(..., "--site", help="The campaign site id the data comes from."),
    workers: int = typer.Option(
        0, "--workers", "-j", min=0, help="Worker processes (0: one per CPU core, plus one)."
    ),
) -> None:
    """Import a site's folder or zip hand-over: de-identify, catalogue, quarantine the rest.

    Re-running it is harmless: what is already catalogued counts as a duplicate.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from medai.collection.receivers.folder import import_path
    from medai.errors import MedaiError

    # No refresh thread: the import forks its workers, which is only safe single-threaded.
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        auto_refresh=False,
    ) as progress:
        task = progress.add_task(f"importing for {site}", total=None)
        last_refresh = [0.0]

        def advance(_outcome: object) -> None:
            progress.advance(task)
            now = time.monotonic()
            if now - last_refresh[0] > 0.1:
                last_refresh[0] = now
                progress.refresh()

        def set_total(total: int) -> None:
            progress.update(task, total=total)
            progress.refresh()

        try:
            summary = import_path(
                path, site, workers=workers, on_total=set_total, on_outcome=advance
            )
        except MedaiError as exc:
            progress.stop()
            _fail(str(exc))

    table = Table(title=f"Import run {summary.run_id} — site {site}")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row("stored", str(summary.stored))
    table.add_row("duplicate", str(summary.duplicate))
    for reason, count in sorted(summary.quarantined.items()):
        table.add_row(f"quarantined: {reason}", str(count))
    table.add_row("[bold]inputs", f"[bold]{summary.inputs}")
    console.print(table)
    rate = summary.inputs / summary.seconds if summary.seconds else 0.0
    console.print(f"{summary.inputs} inputs in {summary.seconds:.1f} s ({rate:.1f} files/s)")
    if summary.offered != summary.inputs:
        _fail(f"accounted for {summary.offered} of {summary.inputs} inputs", code=1)


@collect_app.command("listen")
def listen_command(
    port: int = typer.Option(11112, "--port", min=1, max=65535, help="TCP port to listen on."),
    ae_title: str = typer.Option("MEDAI", "--ae-title", help="medai's own AE title."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to bind."),
    quiet_seconds: float | None = typer.Option(
        None,
        "--quiet-seconds",
        min=0.001,
        help="A study is complete after this long without a new instance "
        "(default: MEDAI_STUDY_QUIET_SECONDS, 60).",
    ),
    drain_seconds: float = typer.Option(
        30.0,
        "--drain-seconds",
        min=0.0,
        help="On stop, how long associations in flight may take to finish before "
        "they are aborted (their senders retry what was not acknowledged).",
    ),
    network_timeout: float = typer.Option(
        60.0,
        "--network-timeout",
        min=0.1,
        help="Abort an association idle, or stalled mid-message, for this many seconds.",
    ),
) -> None:
    """Receive DICOM pushed by the sites' PACS (C-STORE SCP, with C-ECHO).

    The calling AE title names the site (see the campaign's sites); unknown callers
    are rejected. Studies are marked complete after a quiet period. Runs until
    Ctrl-C or SIGTERM; then stops accepting, lets associations in flight finish
    (up to --drain-seconds; a second Ctrl-C aborts them at once) and prints a summary.
    """
    import signal
    import threading

    from medai.collection.pipeline import IngestPipeline
    from medai.collection.receivers.cstore import StorageListener, site_by_ae_title
    from medai.config import get_settings
    from medai.errors import MedaiError

    settings = get_settings()
    try:
        pipeline = IngestPipeline.from_settings(settings)
    except MedaiError as exc:
        _fail(str(exc))
    sites = site_by_ae_title(pipeline)
    if not sites:
        _fail("the campaign defines no AE titles: add them to the sites and run campaign init")
    quiet = quiet_seconds if quiet_seconds is not None else settings.study_quiet_seconds
    listener = StorageListener(
        pipeline, ae_title, sites, quiet_seconds=quiet, network_timeout=network_timeout
    )
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        # The first signal starts the drain; a second one cuts it short.
        (hurry if stop.is_set() else stop).set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        listener.start(host, port)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port")
    console.print(
        f"listening as {ae_title} on {host}:{port} for "
        + ", ".join(f"{title} ({site})" for title, site in sorted(sites.items()))
        + f"; studies complete after {quiet:g} s without new instances"
    )
    while not stop.wait(0.5):
        pass
    in_flight = len(listener.in_flight())
    console.print(
        f"stopping: no new associations; waiting up to {drain_seconds:g} s for "
        f"{in_flight} in flight"
    )
    result = listener.stop(drain_seconds, hurry=hurry)
    counts = listener.counts
    if result.aborted:
        console.print(
            f"[yellow]aborted {result.aborted} association(s) still running after "
            f"{result.seconds:.1f} s: their senders retry what was not acknowledged"
        )
    console.print(
        f"{counts.associations} associations ({counts.rejected} rejected, "
        f"{counts.aborted} aborted); {counts.instances} instances: {counts.stored} stored, "
        f"{counts.duplicate} duplicate, {counts.quarantined} quarantined, "
        f"{counts.failed} refused (not in custody); "
        f"{listener.sweeper.completed} studies completed"
    )
    console.print("listener stopped")


@collect_app.command("verify")
def verify_command(
    rehash: bool = typer.Option(
        True, "--rehash/--no-rehash", help="Re-hash every stored file (slower, thorough)."
    ),
    collect: bool = typer.Option(
        False, "--collect", help="Delete orphan store files (left by interrupted ingests)."
    ),
    min_age: float = typer.Option(
        3600.0, "--min-age", help="Only collect orphans older than this many seconds."
    ),
) -> None:
    """Prove the accounting: inputs = stored + duplicate + quarantined; every row has its file."""
    from medai.collection.accounting import collect_orphans, verify_collection
    from medai.errors import MedaiError

    try:
        with err_console.status("checking the catalog, the store and the quarantine"):
            report = verify_collection(rehash=rehash)
    except MedaiError as exc:
        _fail(str(exc))

    table = Table(title="Collection accounting")
    table.add_column("")
    table.add_column("count", justify="right")
    for outcome in ("stored", "duplicate", "quarantined"):
        table.add_row(f"{outcome} events", str(report.events.get(outcome, 0)))
    table.add_row("[bold]inputs", f"[bold]{report.inputs}")
    table.add_row("instance rows", str(report.instances))
    table.add_row("quarantine entries", str(report.quarantine_entries))
    table.add_row("import runs", str(len(report.runs)))
    table.add_row("orphan store files", str(len(report.orphan_files)))
    console.print(table)
    for run in report.interrupted_runs:
        console.print(
            f"[yellow]import run {run.run_id} ({run.site_id}) was interrupted after "
            f"{run.events} of {run.inputs_found} inputs: run the import again (it is harmless)."
        )
    if collect:
        removed = collect_orphans(report, min_age_seconds=min_age)
        console.print(f"collected {removed} orphan store file(s)")
    elif report.orphan_files:
        console.print("orphan files can be removed with `medai collect verify --collect`")
    if report.ok:
        console.print("[bold green]OK[/]: every input is stored, a duplicate or quarantined")
        return
    for problem in report.problems:
        err_console.print(f"[red]problem:[/] {problem}")
    raise typer.Exit(1)


@collect_app.command("quarantine")
def quarantine_command(
    purge: bool = typer.Option(
        False,
        "--purge",
        help="Delete raw files held longer than MEDAI_QUARANTINE_RETENTION_DAYS "
        "(the catalog keeps their rows, so the accounting still adds up).",
    ),
) -> None:
    """Show what is quarantined, by site and reason; optionally apply the retention limit."""
    from medai.collection.retention import purge_expired, summarize_quarantine
    from medai.config import get_settings

    settings = get_settings()
    if purge:
        removed = purge_expired(settings)
        console.print(
            f"purged {removed} file(s) older than {settings.quarantine_retention_days} days"
        )
    summary = summarize_quarantine(settings)
    table = Table(title=f"Quarantine ({settings.resolved_quarantine_dir})")
    for column in ("site", "reason", "files"):
        table.add_column(column, justify="right" if column == "files" else "left")
    for (site, reason), count in sorted(summary.by_site_and_reason.items()):
        table.add_row(site, reason, str(count))
    console.print(table)
    oldest = summary.oldest_held.date().isoformat() if summary.oldest_held else "-"
    console.print(f"held {summary.held}, purged {summary.released}; oldest held since {oldest}")


@audit_app.command("verify")
def audit_verify_command() -> None:
    """Recompute the audit log's hash chain; exit 1 and name the first bad record if edited."""
    from medai.audit import verify_audit_chain
    from medai.catalog.db import create_engine_for, session_factory
    from medai.config import get_settings

    engine = create_engine_for(get_settings().resolved_database_url)
    with session_factory(engine)() as session:
        report = verify_audit_chain(session)
    if report.ok:
        console.print(f"[bold green]OK[/]: {report.records} audit records, chain intact")
        return
    err_console.print(
        f"[bold red]audit chain broken[/] at record {report.first_bad_seq}: {report.problem}"
    )
    raise typer.Exit(1)


collect_app.command("pull")(pull_command)  # DICOMweb pull: medai/collection/receivers/pull_cli.py


def register(app: typer.Typer) -> None:
    """Add ``collect`` and ``audit`` to the root app."""
    app.add_typer(collect_app, name="collect")
    app.add_typer(audit_app, name="audit")
