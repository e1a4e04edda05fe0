"""``medai security status``: the security events of the last 24 hours and 7 days."""

from __future__ import annotations

from typing import Annotated

import typer

from medai.cli_support import EXIT_PROBLEM, JsonFlag

__all__ = ["register", "security_app"]

security_app = typer.Typer(
    help="Security monitoring: failed authentication, revoked keys, rejected associations, "
    "key mismatches, gate overrides, quarantine spikes, backups.",
    no_args_is_help=True,
)


@security_app.command("status")
def status_command(
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 when the last 24 hours have an alert (for a cron job or a check).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Security events of the last 24 hours and 7 days, from the audit chain.

    Counts by kind, the top sources, the last of each kind, quarantine spikes by site and
    reason (a day's count at least MEDAI_QUARANTINE_SPIKE_MIN and over
    MEDAI_QUARANTINE_SPIKE_FACTOR times the 14-day mean) and the age of the last backup
    (stale after MEDAI_BACKUP_STALE_HOURS).
    """
    from rich.table import Table

    from medai.cli_support import catalog_session, console, plain, print_json, require_campaign
    from medai.config import get_settings
    from medai.ops.security import KINDS, security_status

    require_campaign()
    settings = get_settings()
    with catalog_session(settings) as session:
        windows = security_status(session, settings)
    day, week = windows["24h"], windows["7d"]
    if as_json:
        print_json({name: summary.to_dict() for name, summary in windows.items()})
    else:
        out = console()
        table = Table(title="security events", title_justify="left")
        for column in ("kind", "24 h", "7 days", "last seen"):
            table.add_column(column, justify="left" if column in ("kind", "last seen") else "right")
        for kind in KINDS:
            seen = week.last_seen[kind]
            table.add_row(
                plain(kind),
                plain(day.events[kind], "bold red" if day.events[kind] else ""),
                plain(week.events[kind]),
                plain(seen.isoformat(timespec="seconds") if seen else "never"),
            )
        out.print(table)
        if week.top_sources:
            sources = Table(title="top sources (7 days)", title_justify="left")
            for column in ("source", "events", "kinds", "last seen"):
                sources.add_column(column)
            for source in week.top_sources:
                sources.add_row(
                    plain(source.source),
                    plain(source.events),
                    plain(", ".join(source.kinds)),
                    plain(source.last_seen.isoformat(timespec="seconds")),
                )
            out.print(sources)
        for spike in week.quarantine_spikes:
            out.print(
                plain(
                    f"quarantine spike: {spike.site} {spike.reason} on {spike.day}: "
                    f"{spike.count} (14-day mean {spike.baseline_mean:g} a day)",
                    "bold red",
                )
            )
        backup = week.backup
        if backup.last is None:
            out.print(plain("backup: none recorded (`medai backup create DEST`)", "bold red"))
        else:
            shown = f"backup: last {backup.last.isoformat(timespec='seconds')}, "
            shown += f"{backup.age_hours:.1f} h ago" if backup.age_hours is not None else ""
            stale = backup.status == "stale"
            out.print(
                plain(
                    shown + (f" (stale: over {backup.stale_hours:g} h)" if stale else ""),
                    "bold red" if stale else "",
                )
            )
        if day.alerts:
            out.print(plain(f"alerts (24 h): {', '.join(day.alerts)}", "bold red"))
        else:
            out.print(plain("no alert in the last 24 hours", "green"))
    if strict and day.alerts:
        raise typer.Exit(EXIT_PROBLEM)


def register(app: typer.Typer) -> None:
    """Add ``security`` to the root app."""
    app.add_typer(security_app, name="security")
