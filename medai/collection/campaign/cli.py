"""``medai campaign init|status|export`` (and ``key``): set the campaign up, report progress."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from medai.cli_support import (
    JsonFlag,
    console,
    fail,
    parse_date,
    plain,
    print_json,
    require_campaign,
    row,
)
from medai.collection.campaign.status_rule import STATUS_RULE

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from medai.collection.campaign.definition import CampaignDefinition
    from medai.collection.campaign.report import CampaignProgress, SiteProgress
    from medai.collection.campaign.setup import InitResult

__all__ = ["campaign_app", "print_status_report", "register"]

campaign_app = typer.Typer(
    name="campaign",
    help="Define and set up the collection campaign (sites, targets, de-identification).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``campaign`` (with its ``key`` sub-commands) to the root ``medai`` app."""
    from medai.collection.campaign.key_cli import key_app

    campaign_app.add_typer(key_app, name="key")
    app.add_typer(campaign_app, name="campaign")


@campaign_app.command("init")
def init_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="Campaign definition (TOML), e.g. collection/example-campaign.toml.",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Set up the campaign: migrate the catalog, create the key, record the sites.

    Safe to run again after editing the file: sites are updated, the key is kept.
    """
    from medai.audit import actors
    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign
    from medai.config import get_settings
    from medai.errors import CampaignError, MedaiError

    try:
        definition = load_campaign(file)
        result = init_campaign(definition, get_settings(), actor=actors.operator())
    except CampaignError as exc:
        raise fail(exc, f"Fix {file} and run `medai campaign init {file}` again.") from None
    except MedaiError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(result)
    else:
        _print_init_summary(console(), definition, result)


def _print_init_summary(out: Console, definition: CampaignDefinition, result: InitResult) -> None:
    from rich.table import Table

    verb = "unchanged"
    if result.campaign_created or result.campaign_updated:
        verb = "created" if result.campaign_created else "updated"
    out.print(
        Text.assemble(
            ("Campaign ", "bold"),
            (definition.name, "bold cyan"),
            f" ({verb}): {definition.start_date.isoformat()} to {definition.last_day.isoformat()}"
            f", {definition.length_days} days",
        )
    )
    out.print(plain(f"Catalog: {result.database}"), soft_wrap=True)

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
            *row(
                site.id,
                site.name,
                ", ".join(site.ae_titles),
                targets,
                status.get(site.id, "unchanged"),
            )
        )
    out.print(table)
    if result.sites_not_in_definition:
        out.print(
            plain(
                "In the catalog but no longer in the file (kept): "
                + ", ".join(result.sites_not_in_definition),
                "yellow",
            )
        )
    key_state = "created" if result.key_created else "already there: reused, not overwritten"
    out.print(plain(f"Pseudonymization key: {result.key_file} ({key_state})"), soft_wrap=True)
    out.print(
        plain(
            "Back up the key file now (`medai campaign key export --out FILE` encrypts it under a "
            "passphrase), and keep the backup apart from the catalog backups: "
            "without it, data sent later gets different pseudonyms; whoever holds both the key "
            "and the catalog can link pseudonyms back to known patient IDs.",
            "bold yellow",
        )
    )


def _progress_report(today: dt.date | None) -> CampaignProgress:
    """Compute the campaign's progress from the configured catalog (exits on errors)."""
    from medai.cli_support import catalog_session
    from medai.collection.campaign.progress import compute_progress
    from medai.errors import MedaiError

    require_campaign()
    try:
        with catalog_session() as session:
            return compute_progress(session, today=today)
    except MedaiError as exc:
        raise fail(exc) from None


def _audit_anchor() -> str:
    """The audit chain's head as SEQ:HASH (see ``medai audit anchor``)."""
    from medai.audit import audit_head
    from medai.cli_support import catalog_session

    with catalog_session() as session:
        return str(audit_head(session))


TodayOption = Annotated[
    dt.date | None,
    typer.Option(
        "--today",
        parser=parse_date,
        metavar="DATE",
        help="Report as of this day (YYYY-MM-DD, UTC); default today.",
    ),
]
_STATUS_STYLE = {
    "silent": "bold magenta",
    "late": "bold red",
    "at risk": "yellow",
    "on track": "green",
    "complete": "bold green",
    "no targets": "dim",
}
_KPI_COLUMNS = (
    "Status",
    "Last seen",
    "Outbox",
    "Done (plan)",
    "Studies",
    "Instances",
    "7-day rate",
    "Projected",
    "QC rejected",
    "Labelled",
)


_STATUS_HELP = (
    "Show progress per site against its targets, silent and late sites first, with the "
    "KPIs, when each site was last heard from, its edge's outbox, and why it has its "
    "status.\n\n"
    "The JSON form is the same document as `medai campaign export --format json` (totals "
    "such as `studies` and `instances` at the top level; per site `status_code`, "
    "`status_reason`, `last_seen`, `edge`).\n\n"
    "\b\nStatus rule:\n" + STATUS_RULE
)


@campaign_app.command("status", help=_STATUS_HELP)
def status_command(
    as_json: JsonFlag = False,
    today: TodayOption = None,
) -> None:
    """Show progress per site against its targets (the help text is ``_STATUS_HELP``)."""
    report = _progress_report(today)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    print_status_report(report, console())


def print_status_report(report: CampaignProgress, out: Console) -> None:
    """The status of ``medai campaign status``: KPIs per site, why each status, targets.

    Tables when the terminal is wide enough for every value in full; otherwise one block
    per site (names and numbers are never cut short to fit, e.g. in 80 columns). Lines
    wrap between words only.
    """
    out.print(
        Text.assemble(
            (report.campaign, "bold cyan"),
            f": day {report.day} of {report.length_days} ({report.start_date} to "
            f"{report.end_date}), {report.days_left} days left — ",
            (report.status, _STATUS_STYLE[report.status]),
        )
    )
    out.print(plain(report.status_reason))
    tables = [_kpi_table(report), _targets_table(report)]
    if all(_fits(out, table) for table in tables):
        for table in tables:
            out.print(table)
    else:
        for site in report.sites:
            name = Text.assemble((site.site, "bold"), "\n  ", site.name)
            _print_site_block(out, name, site, site.targets, report.generated_at)
        campaign = plain("campaign (all sites)", "bold")
        _print_site_block(out, campaign, report, [], report.generated_at)
    if report.quarantine_reasons:
        reasons = ", ".join(f"{reason} {n}" for reason, n in report.quarantine_reasons.items())
        out.print(plain(f"Quarantined by reason: {reasons}"))
    out.print(plain("Why:", "bold"))
    for site in report.sites:
        out.print(
            Text.assemble(
                "  ", (site.site, "bold"), ": ", (site.status, _STATUS_STYLE[site.status]), " — "
            ),
            plain(site.status_reason),
            sep="",
        )
    if report.silent_sites:
        out.print(plain("Silent: " + ", ".join(report.silent_sites), "bold magenta"))
    if report.late_sites:
        out.print(plain("Late: " + ", ".join(report.late_sites), "bold red"))


def _fits(out: Console, renderable: RenderableType) -> bool:
    from rich.measure import Measurement

    # Measured without the terminal's limit: the width at which nothing is wrapped or cut.
    natural = Measurement.get(out, out.options.update_width(1_000_000), renderable)
    return natural.maximum <= out.width


def _kpi_table(report: CampaignProgress) -> RenderableType:
    from rich.table import Table

    # No outer border: the width goes to the values (the site names are never cut).
    table = Table(title="Progress by site (silent and late first)", show_edge=False, pad_edge=False)
    table.add_column("Site")
    for column in _KPI_COLUMNS:
        justify = "left" if column == "Status" else "right"
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for site in report.sites:
        table.add_row(
            Text.assemble(site.site, "\n", (site.name, "dim")),
            *_kpi_cells(site, report.generated_at),
        )
    table.add_section()
    table.add_row(plain("campaign", "bold"), *_kpi_cells(report, report.generated_at))
    return table


def _targets_table(report: CampaignProgress) -> RenderableType:
    from rich.table import Table

    targets = Table(title="Targets")
    for column in ("Site", "Target", "Collected", "Goal", "Done"):
        left = column in ("Site", "Target")
        targets.add_column(column, justify="left" if left else "right", no_wrap=not left)
    for site in report.sites:
        for target in site.targets:
            targets.add_row(
                *row(site.site, _target_name(target), target.collected, target.target),
                plain(_percent(target.fraction)),
            )
    return targets


def _target_name(target: Any) -> str:
    what = " ".join(v for v in (target.modality, target.body_part, target.finding) if v)
    return f"{what or 'any'} ({target.unit})"


def _print_site_block(
    out: Console,
    title: Text,
    part: SiteProgress | CampaignProgress,
    targets: list[Any],
    now: dt.datetime,
) -> None:
    """One site (or the campaign) as label/value pairs: narrow enough for any terminal."""
    from rich.padding import Padding
    from rich.table import Table

    out.print(title)
    grid = Table.grid(padding=(0, 2))
    for _ in range(2):
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(no_wrap=True)
    pairs = list(zip(_KPI_COLUMNS, _kpi_cells(part, now), strict=True))
    half = (len(pairs) + 1) // 2
    rights = [*pairs[half:], ("", "")][:half]
    for left, right in zip(pairs[:half], rights, strict=True):
        grid.add_row(*row(left[0], left[1], right[0], right[1]))
    # The targets in a grid of their own: their long lines never push the KPIs apart.
    goals = Table.grid(padding=(0, 2))
    goals.add_column(style="dim", no_wrap=True)
    goals.add_column(no_wrap=True)
    for target in targets:
        goals.add_row(
            *row(
                "target",
                f"{_target_name(target)}: {target.collected} of {target.target} "
                f"({_percent(target.fraction)})",
            )
        )
    out.print(Padding(grid, (0, 0, 0 if targets else 1, 2)))
    if targets:
        out.print(Padding(goals, (0, 0, 1, 2)))


def _kpi_cells(part: SiteProgress | CampaignProgress, now: dt.datetime) -> list[Text]:
    """The status table's cells after the name, for a site or the whole campaign."""
    from medai.collection.campaign.report import SiteProgress

    seen, outbox = "", ""
    if isinstance(part, SiteProgress):
        seen = _ago(part.last_seen, now)
        edge = part.edge
        if edge is None:
            outbox = "no edge"
        else:
            outbox = str(edge.outbox_depth)
            if edge.outbox_depth and edge.oldest_unsent_seconds is not None:
                outbox += f" ({_duration(edge.oldest_unsent_seconds)})"
    return [
        plain(part.status, _STATUS_STYLE[part.status]),
        *row(
            seen,
            outbox,
            f"{_percent(part.progress)} ({_percent(part.expected_progress)})",
            part.studies,
            part.instances,
            "-" if part.rate_7d is None else f"{part.rate_7d * 100:.1f}%/day",
            "done" if part.completed else str(part.projected_completion or "-"),
            f"{part.quarantined} ({part.rejection_rate * 100:.1f}%)",
            f"{part.labelled_studies} ({part.label_coverage * 100:.0f}%)",
        ),
    ]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _duration(seconds: float) -> str:
    """A short age: ``45 s``, ``12 min``, ``5.2 h``, ``3 d``."""
    if seconds < 90:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """How long before ``now`` ``when`` was: ``5.2 h ago``; ``never`` for None."""
    if when is None:
        return "never"
    return _duration((now - when).total_seconds()) + " ago"


@campaign_app.command("export")
def export_command(
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="json (the full document) or csv (per site).")
    ] = "json",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    today: TodayOption = None,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the JSON Schema of the json export and exit.")
    ] = False,
) -> None:
    """Export progress for the city's monitoring system (stable field names, a timestamp).

    JSON: the document described by collection/progress.schema.json (`--schema` prints
    it). CSV: one row per site and a last row for the campaign (site `*`). Both carry
    audit_head, the audit chain's head to check later with `medai audit verify --anchor`.
    """
    import csv
    import io
    import json

    from medai.collection.campaign.report import CSV_COLUMNS, CampaignProgress, progress_csv_rows

    if schema:
        typer.echo(json.dumps(CampaignProgress.model_json_schema(), indent=2))
        return
    if fmt not in ("json", "csv"):
        raise fail(f"unknown format {fmt!r}", "Use --format json or --format csv.")
    report = _progress_report(today)
    # The city's monitoring system keeps what it receives: an anchor for the audit chain.
    report = report.model_copy(update={"audit_head": _audit_anchor()})
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
