"""Commands of the collection part: ``medai campaign ...`` (one function per command)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from medai.collection.campaign.definition import CampaignDefinition
    from medai.collection.campaign.progress import CampaignProgress, SiteProgress
    from medai.collection.campaign.setup import InitResult
    from medai.errors import MedaiError

__all__ = ["campaign_app", "print_status_report", "register"]

campaign_app = typer.Typer(
    name="campaign",
    help="Define and set up the collection campaign (sites, targets, de-identification).",
    no_args_is_help=True,
)

# Exit status for a problem the user can fix (bad file, missing key): as click uses for usage.
EXIT_USER_ERROR = 2


class _UsageError(Exception):
    """A bad option value (printed like the domain errors)."""


def register(app: typer.Typer) -> None:
    """Add the collection sub-apps (``campaign``) to the root ``medai`` app."""
    app.add_typer(campaign_app, name="campaign")


def _fail(error: MedaiError | _UsageError, hint: str | None = None) -> typer.Exit:
    """Print ``error`` in red on stderr (with what to do next) and return the exit to raise."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True)
    # Text, not markup: messages hold field paths like "sites[1]" that rich would eat.
    console.print(Text(f"error: {error}", style="red"), soft_wrap=True)
    if hint:
        console.print(Text(hint), soft_wrap=True)
    return typer.Exit(EXIT_USER_ERROR)


@campaign_app.command("init")
def init_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="Campaign definition (TOML), e.g. collection/example-campaign.toml.",
        ),
    ],
) -> None:
    """Set up the campaign: migrate the catalog, create the key, record the sites.

    Safe to run again after editing the file: sites are updated, the key is kept.
    """
    from rich.console import Console

    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign
    from medai.config import get_settings
    from medai.errors import CampaignError, MedaiError

    try:
        definition = load_campaign(file)
        result = init_campaign(definition, get_settings())
    except CampaignError as exc:
        raise _fail(exc, f"Fix {file} and run `medai campaign init {file}` again.") from None
    except MedaiError as exc:
        raise _fail(exc) from None
    _print_init_summary(Console(), definition, result)


def _print_init_summary(
    console: Console, definition: CampaignDefinition, result: InitResult
) -> None:
    from rich.table import Table
    from rich.text import Text

    verb = "unchanged"
    if result.campaign_created or result.campaign_updated:
        verb = "created" if result.campaign_created else "updated"
    console.print(
        Text.assemble(
            ("Campaign ", "bold"),
            (definition.name, "bold cyan"),
            f" ({verb}): {definition.start_date.isoformat()} to {definition.last_day.isoformat()}"
            f", {definition.length_days} days",
        )
    )
    console.print(Text(f"Catalog: {result.database}"), soft_wrap=True)

    status = dict.fromkeys(result.sites_created, "new") | dict.fromkeys(
        result.sites_updated, "updated"
    )
    table = Table(title="Sites", show_lines=False)
    for column in ("Site", "Name", "AE titles", "Targets", "Change"):
        table.add_column(column)
    for site in definition.sites:
        targets = "\n".join(
            " ".join(v for v in (t.modality, t.body_part, t.finding) if v)
            + f": {t.studies} studies"
            for t in site.targets
        )
        table.add_row(
            site.id, site.name, ", ".join(site.ae_titles), targets, status.get(site.id, "unchanged")
        )
    console.print(table)
    if result.sites_not_in_definition:
        console.print(
            Text(
                "In the catalog but no longer in the file (kept): "
                + ", ".join(result.sites_not_in_definition),
                style="yellow",
            )
        )

    key_state = "created" if result.key_created else "already there: reused, not overwritten"
    console.print(Text(f"Pseudonymization key: {result.key_file} ({key_state})"), soft_wrap=True)
    console.print(
        Text(
            "Back up the key file now, and keep the backup apart from the catalog backups: "
            "without it, data sent later gets different pseudonyms; whoever holds both the key "
            "and the catalog can link pseudonyms back to known patient IDs.",
            style="bold yellow",
        )
    )


def _progress_report(today: str | None) -> CampaignProgress:
    """Compute the campaign's progress from the configured catalog (exits on errors)."""
    import datetime as dt

    from medai.catalog.db import create_engine_for, session_factory
    from medai.collection.campaign.progress import compute_progress
    from medai.config import get_settings
    from medai.errors import MedaiError

    day = None
    if today is not None:
        try:
            day = dt.date.fromisoformat(today)
        except ValueError:
            raise _fail(
                _UsageError(f"--today {today!r} is not a date"), "Write it as YYYY-MM-DD."
            ) from None
    engine = create_engine_for(get_settings().resolved_database_url)
    try:
        # Reads only: no write lock on SQLite, so it never waits behind an import.
        sessions = session_factory(engine.execution_options(sqlite_begin="DEFERRED"))
        with sessions() as session:
            return compute_progress(session, today=day)
    except MedaiError as exc:
        raise _fail(exc) from None
    finally:
        engine.dispose()


_TODAY_HELP = "Report as of this day (YYYY-MM-DD, UTC); default today."
_STATUS_STYLE = {
    "late": "bold red",
    "at risk": "yellow",
    "on track": "green",
    "complete": "bold green",
    "no targets": "dim",
}


@campaign_app.command("status")
def status_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full report as JSON (for scripts).")
    ] = False,
    today: Annotated[str | None, typer.Option("--today", help=_TODAY_HELP)] = None,
) -> None:
    """Show progress per site against its targets: late sites first, with the KPIs.

    Status rule: complete when every target is met; late below 70% of the plan for today
    (or when the campaign ended unmet); at risk at 70-90% of the plan, or when the 7-day
    rate finishes after the last day; on track otherwise. The JSON form is the same
    document as `medai campaign export --format json` (totals such as `studies` and
    `instances` at the top level).
    """
    from rich.console import Console

    report = _progress_report(today)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    print_status_report(report, Console())


def print_status_report(report: CampaignProgress, console: Console) -> None:
    """The status tables of ``medai campaign status``: KPIs per site, targets, late sites."""
    from rich.table import Table
    from rich.text import Text

    console.print(
        Text.assemble(
            (report.campaign, "bold cyan"),
            f": day {report.day} of {report.length_days} ({report.start_date} to "
            f"{report.end_date}), {report.days_left} days left — ",
            (report.status, _STATUS_STYLE[report.status]),
        )
    )
    table = Table(title="Progress by site (late first)")
    for column, justify in (
        ("Site", "left"),
        ("Status", "left"),
        ("Progress", "right"),
        ("Plan today", "right"),
        ("Studies", "right"),
        ("Instances", "right"),
        ("7-day rate", "right"),
        ("Projected", "right"),
        ("QC rejected", "right"),
        ("Labelled", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for site in report.sites:
        table.add_row(f"{site.site}\n[dim]{site.name}", *_kpi_cells(site))
    table.add_section()
    table.add_row("[bold]campaign", *_kpi_cells(report))
    console.print(table)
    targets = Table(title="Targets")
    for column in ("Site", "Target", "Collected", "Goal", "Done"):
        targets.add_column(column, justify="left" if column in ("Site", "Target") else "right")
    for site in report.sites:
        for target in site.targets:
            what = " ".join(v for v in (target.modality, target.body_part, target.finding) if v)
            targets.add_row(
                site.site,
                f"{what or 'any'} ({target.unit})",
                str(target.collected),
                str(target.target),
                _percent(target.fraction),
            )
    console.print(targets)
    if report.quarantine_reasons:
        console.print(
            "Quarantined by reason: "
            + ", ".join(f"{reason} {n}" for reason, n in report.quarantine_reasons.items())
        )
    if report.late_sites:
        console.print(Text("Late: " + ", ".join(report.late_sites), style="bold red"))


def _kpi_cells(part: SiteProgress | CampaignProgress) -> list[Text | str]:
    """The status table's cells after the name, for a site or the whole campaign."""
    from rich.text import Text

    return [
        Text(part.status, style=_STATUS_STYLE[part.status]),
        _percent(part.progress),
        _percent(part.expected_progress),
        str(part.studies),
        str(part.instances),
        "-" if part.rate_7d is None else f"{part.rate_7d * 100:.1f}%/day",
        "done" if part.completed else str(part.projected_completion or "-"),
        f"{part.quarantined} ({part.rejection_rate * 100:.1f}%)",
        f"{part.labelled_studies} ({part.label_coverage * 100:.0f}%)",
    ]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


@campaign_app.command("export")
def export_command(
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="json (the full document) or csv (per site).")
    ] = "json",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    today: Annotated[str | None, typer.Option("--today", help=_TODAY_HELP)] = None,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the JSON Schema of the json export and exit.")
    ] = False,
) -> None:
    """Export progress for the city's monitoring system (stable field names, a timestamp).

    JSON: the document described by collection/progress.schema.json (`--schema` prints
    it). CSV: one row per site and a last row for the campaign (site `*`).
    """
    import csv
    import io
    import json

    from medai.collection.campaign.progress import (
        CSV_COLUMNS,
        CampaignProgress,
        progress_csv_rows,
    )

    if schema:
        typer.echo(json.dumps(CampaignProgress.model_json_schema(), indent=2))
        return
    if fmt not in ("json", "csv"):
        raise _fail(_UsageError(f"unknown format {fmt!r}"), "Use --format json or --format csv.")
    report = _progress_report(today)
    if fmt == "json":
        text = report.model_dump_json(indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(progress_csv_rows(report))
        text = buffer.getvalue()
    if output is None:
        typer.echo(text, nl=False)
        return
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)  # the monitoring system never reads a half-written file
    typer.echo(f"wrote {output}", err=True)
