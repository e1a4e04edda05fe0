"""``medai collect pull``: fetch a site's studies from its DICOMweb archive (QIDO-RS/WADO-RS).

Registered on ``medai collect`` by :mod:`medai.collection.cli`. Only typer and
rich are imported here; the pull itself (requests, dicomweb-client, the pipeline)
loads when the command runs, so ``medai --help`` stays fast.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from medai.collection.receivers.dicomweb_pull import PullSummary

__all__ = ["parse_date", "parse_header", "pull_command"]

console = Console()
err_console = Console(stderr=True)

_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d")


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def parse_date(value: str) -> dt.date:
    """A day given as ``YYYY-MM-DD`` or ``YYYYMMDD``.

    Raises
    ------
    typer.BadParameter
        Naming both accepted forms.
    """
    for form in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(value.strip(), form).date()
        except ValueError:
            continue
    raise typer.BadParameter(f"{value!r} is not a date: give YYYY-MM-DD or YYYYMMDD")


def parse_header(value: str) -> tuple[str, str]:
    """A request header given as ``'Name: value'``.

    Raises
    ------
    typer.BadParameter
        When there is no colon or no name.
    """
    name, colon, text = value.partition(":")
    if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
        raise typer.BadParameter("give a header as 'Name: value', e.g. 'X-Api-Key: 123'")
    return name.strip(), text.strip()


def pull_command(
    site: str = typer.Option(..., "--site", help="The campaign site id the archive belongs to."),
    url: str = typer.Option(
        ...,
        "--url",
        help="The archive's DICOMweb root, e.g. http://pacs.example.org:8042/dicom-web.",
    ),
    since: dt.date = typer.Option(
        ...,
        "--since",
        parser=parse_date,
        metavar="DATE",
        help="First StudyDate to pull (YYYY-MM-DD or YYYYMMDD).",
    ),
    until: dt.date | None = typer.Option(
        None,
        "--until",
        parser=parse_date,
        metavar="DATE",
        help="Last StudyDate to pull, included (default: no end).",
    ),
    header: list[str] = typer.Option(
        [], "--header", "-H", help="Extra request header 'Name: value' (repeatable)."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="MEDAI_PULL_TOKEN",
        help="Bearer token for the archive (or set MEDAI_PULL_TOKEN, kept out of the "
        "shell history).",
        show_envvar=False,
    ),
    max_attempts: int = typer.Option(
        6, "--max-attempts", min=1, help="Attempts per request before the pull stops."
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", min=1.0, help="Seconds to wait for the archive on each read."
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Ignore this pull's checkpoint (instances already catalogued are still "
        "not downloaded again).",
    ),
) -> None:
    """Pull a site's studies in a date window from its DICOMweb archive.

    Every instance is de-identified and catalogued like any other input. Stopped or
    cut off, the same command run again resumes where it stopped: studies done are
    skipped and nothing already catalogued is downloaded again.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from medai.collection.receivers.dicomweb_pull import RetryPolicy, pull_site
    from medai.errors import MedaiError, PullStopped

    first, last = since, until
    if last is not None and last < first:
        _fail(f"--until {last} is before --since {first}")
    headers = dict(parse_header(item) for item in header)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    window = f"{first} to {last}" if last else f"from {first}"

    stopped: PullStopped | None = None
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"searching {site}'s studies {window}", total=None)
        offered = [0]

        def set_total(total: int) -> None:
            progress.update(task, total=total, description=f"pulling {site}'s studies")

        def study_done() -> None:
            progress.advance(task)

        def instance_done(_outcome: object) -> None:
            offered[0] += 1
            progress.update(task, description=f"pulling {site}'s studies ({offered[0]} instances)")

        try:
            summary = pull_site(
                site,
                url,
                first,
                last,
                headers=headers,
                retry=RetryPolicy(max_attempts=max_attempts),
                timeout=(min(10.0, timeout), timeout),
                fresh=fresh,
                on_total=set_total,
                on_study=study_done,
                on_outcome=instance_done,
            )
        except PullStopped as exc:
            stopped, summary = exc, exc.summary
        except MedaiError as exc:  # before anything was fetched: site, URL, campaign
            progress.stop()
            _fail(str(exc))

    _print_summary(summary, title=f"Pull run {summary.run_id}: {site}, studies {window}")
    if stopped is not None:
        _fail(str(stopped), code=1)


def _print_summary(summary: PullSummary, title: str) -> None:
    table = Table(title=title)
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("studies found", str(summary.studies_found))
    table.add_row("studies pulled", str(summary.studies_pulled))
    table.add_row("studies skipped (done before)", str(summary.studies_skipped))
    table.add_row("instances stored", str(summary.stored))
    table.add_row("instances duplicate", str(summary.duplicate))
    for reason, count in sorted(summary.quarantined.items()):
        table.add_row(f"instances quarantined: {reason}", str(count))
    table.add_row("instances skipped (already here)", str(summary.instances_skipped))
    table.add_row("retries", str(summary.retries))
    console.print(table)
    rate = summary.downloaded / summary.seconds if summary.seconds else 0.0
    state = "complete" if summary.complete else "stopped"
    console.print(
        f"{summary.downloaded} instances downloaded in {summary.seconds:.1f} s "
        f"({rate:.1f}/s); pull {state}"
    )
