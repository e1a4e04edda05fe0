"""``medai collect quarantine``: the summary (and retention purge), and acting on entries.

``medai collect quarantine`` alone prints the summary by site and reason, ``--purge``
applies the retention limit (as before the subcommands existed, so scripts keep working).
The subcommands act on entries (:mod:`medai.collection.quarantine_actions`): ``list``,
``show`` (the header without identifying values), ``release`` (re-offer after a fix) and
``purge`` (delete raw files now). Every action is audited as the person at the terminal.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from medai.cli_support import (
    EXIT_PROBLEM,
    JsonFlag,
    console,
    err_console,
    fail,
    parse_date,
    plain,
    print_json,
    progress_bar,
    require_campaign,
    row,
)

if TYPE_CHECKING:
    from medai.collection.quarantine_actions import (
        ActionResult,
        EntryView,
        QuarantineFilter,
        QuarantinePage,
    )
    from medai.collection.retention import QuarantineSummary
    from medai.config import Settings

__all__ = ["quarantine_app", "register"]

quarantine_app = typer.Typer(
    help="What is quarantined, and acting on it: list, show, release after a fix, purge.",
    invoke_without_command=True,
)

SiteOption = Annotated[str | None, typer.Option("--site", help="Only this site's entries.")]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Only this reason code (e.g. too-large).")
]
SinceOption = Annotated[
    dt.date | None,
    typer.Option("--since", parser=parse_date, help="Received on or after this day (UTC)."),
]
UntilOption = Annotated[
    dt.date | None,
    typer.Option("--until", parser=parse_date, help="Received on or before this day (UTC)."),
]
IdsArgument = Annotated[
    list[int] | None, typer.Argument(help="Entry ids (see `medai collect quarantine list`).")
]
AllOption = Annotated[bool, typer.Option("--all", help="Every held entry.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@quarantine_app.callback()
def quarantine_command(
    ctx: typer.Context,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Delete raw files held longer than MEDAI_QUARANTINE_RETENTION_DAYS "
            "(the catalog keeps their rows, so the accounting still adds up).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show what is quarantined, by site and reason; optionally apply the retention limit."""
    if ctx.invoked_subcommand is not None:
        return
    from medai.collection.retention import purge_expired, summarize_quarantine
    from medai.config import get_settings

    settings = get_settings()
    require_campaign(settings)
    purged = purge_expired(settings) if purge else None
    summary = summarize_quarantine(settings)
    if as_json:
        print_json(_summary_dict(summary, purged, settings))
        return
    out = console()
    if purged is not None:
        out.print(f"purged {purged} file(s) older than {settings.quarantine_retention_days} days")
    table = Table(title="Quarantine by site and reason")
    for column in ("site", "reason", "files"):
        table.add_column(column, justify="right" if column == "files" else "left")
    for (site, reason), count in sorted(summary.by_site_and_reason.items()):
        table.add_row(*row(site, reason, count))
    out.print(table)
    oldest = summary.oldest_held.date().isoformat() if summary.oldest_held else "-"
    out.print(f"held {summary.held}, purged {summary.released}; oldest held since {oldest}")
    # A line of its own, not the title: a long path is then never wrapped to the table.
    out.print(plain(f"raw files in {settings.resolved_quarantine_dir}"), soft_wrap=True)
    out.print("act on entries: medai collect quarantine list | show | release | purge")


def _summary_dict(
    summary: QuarantineSummary, purged: int | None, settings: Settings
) -> dict[str, Any]:
    return {
        "directory": str(settings.resolved_quarantine_dir),
        "by_site_and_reason": [
            {"site": site, "reason": reason, "files": count}
            for (site, reason), count in sorted(summary.by_site_and_reason.items())
        ],
        "held": summary.held,
        "released": summary.released,
        "oldest_held": summary.oldest_held.isoformat() if summary.oldest_held else None,
        "purged_now": purged,
    }


def _settings() -> Settings:
    from medai.config import get_settings

    settings = get_settings()
    require_campaign(settings)  # before anything touches the home
    return settings


@quarantine_app.command("list")
def list_command(
    site: SiteOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    status: Annotated[
        str, typer.Option("--status", help="held (default), closed or all.")
    ] = "held",
    page: Annotated[
        int, typer.Option("--page", min=1, max=1_000_000, help="Page number, from 1.")
    ] = 1,
    per_page: Annotated[
        int, typer.Option("--per-page", min=1, max=500, help="Entries per page.")
    ] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List quarantine entries, newest first: id, site, reason, size, when, status."""
    from medai.catalog.db import create_engine_for
    from medai.collection.quarantine_actions import QuarantineFilter, list_entries
    from medai.errors import MedaiError

    if status not in ("held", "closed", "all"):
        raise fail(f"--status {status!r} is not one of held, closed, all")
    settings = _settings()
    engine = create_engine_for(settings.resolved_database_url)
    where = QuarantineFilter(site, reason, since, until, status)  # type: ignore[arg-type]
    try:
        found = list_entries(engine, where, page=page, per_page=per_page)
    except MedaiError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if as_json:
        print_json(found.to_dict())
        return
    _print_page(found, where)


def _print_page(found: QuarantinePage, where: QuarantineFilter) -> None:
    out = console()
    table = Table(title=f"Quarantine entries ({where.status})")
    for column in ("id", "site", "reason", "bytes", "received (UTC)", "status"):
        table.add_column(column, justify="right" if column in ("id", "bytes") else "left")
    for item in found.items:
        received = item.received_at.strftime("%Y-%m-%d %H:%M")
        table.add_row(
            *row(item.id, item.site, item.reason_code, item.byte_size, received, item.status)
        )
    out.print(table)
    out.print(f"page {found.page} of {found.pages}, {found.total} entries")
    if found.page < found.pages:
        out.print(f"next: --page {found.page + 1}")


@quarantine_app.command("show")
def show_command(
    entry_id: Annotated[int, typer.Argument(help="The entry's id (from `list`).")],
    as_json: JsonFlag = False,
) -> None:
    """One entry and its header, with every value that may identify the patient removed.

    Reading the raw file is audited (quarantine.view).
    """
    from medai.audit import actors
    from medai.catalog.db import create_engine_for
    from medai.collection.quarantine import Quarantine
    from medai.collection.quarantine_actions import show_entry
    from medai.errors import MedaiError

    settings = _settings()
    engine = create_engine_for(settings.resolved_database_url)
    try:
        quarantine = Quarantine(settings.resolved_quarantine_dir)
        view = show_entry(engine, quarantine, entry_id, actor=actors.operator())
    except MedaiError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if as_json:
        print_json(view.to_dict())
        return
    _print_view(view)


def _print_view(view: EntryView) -> None:
    out = console()
    item = view.item
    out.print(plain(f"entry {item.id}: {item.status}, from {item.site} by {item.source}"))
    out.print(plain(f"reason: {item.reason_code}: {item.reason}"), soft_wrap=True)
    out.print(plain(f"received {item.received_at.isoformat()}, {item.byte_size} bytes"))
    out.print(plain(f"sha256 {item.sha256}"))
    if item.closed_at is not None:
        out.print(plain(f"closed {item.closed_at.isoformat()} by {item.closed_by or '-'}"))
    header = view.header
    if header is None:
        out.print("the raw file is no longer kept: there is no header to show")
        return
    out.print(plain(f"file: {header.kind}"))
    if header.read_problem:
        out.print(plain(f"reading stopped: {header.read_problem}", "yellow"))
    if not header.elements:
        return
    table = Table(title="Header (values that may identify are withheld)")
    for column in ("tag", "keyword", "VR", "length", "value"):
        table.add_column(column, justify="right" if column == "length" else "left")
    for element in header.elements:
        value = element.value if element.value is not None else ("" if element.vr == "SQ" else "—")
        indent = "  " * element.depth
        table.add_row(
            *row(
                indent + element.tag,
                element.keyword or "(private or unknown)",
                element.vr,
                "" if element.length is None else element.length,
                value,
            )
        )
    out.print(table)
    if header.truncated:
        out.print(plain(f"only the first {len(header.elements)} elements are listed", "yellow"))


def _chosen(
    ids: list[int] | None,
    all_held: bool,
    site: str | None,
    reason: str | None,
    since: dt.date | None,
    until: dt.date | None,
    settings: Settings,
) -> list[int]:
    from medai.catalog.db import create_engine_for
    from medai.collection import quarantine_actions as actions

    engine = create_engine_for(settings.resolved_database_url)
    try:
        if all_held:
            return actions.all_held(engine)
        where = actions.QuarantineFilter(site, reason, since, until)
        return actions.select_entries(engine, ids=ids or (), where=where)
    finally:
        engine.dispose()


def _confirm(count: int, what: str, yes: bool, as_json: bool) -> None:
    if yes:
        return
    if as_json:
        raise fail(f"{what} needs --yes with --json (nothing was done)")
    if not typer.confirm(f"{what} {count} entr{'y' if count == 1 else 'ies'}?"):
        raise fail("nothing was done", code=1)


@quarantine_app.command("release")
def release_command(
    ids: IdsArgument = None,
    all_held: AllOption = False,
    site: SiteOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    yes: YesOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Offer held files to the ingest again, under the current campaign rules and settings.

    Stored (or already held: a duplicate): the entry is closed and its raw file deleted.
    Quarantined again: the entry stays held, with the new reason. Fix the cause first
    (a setting such as MEDAI_MAX_INSTANCE_BYTES, the campaign file), then release.
    """
    from medai.audit import actors
    from medai.collection.quarantine_actions import release_entries
    from medai.errors import MedaiError

    settings = _settings()
    try:
        chosen = _chosen(ids, all_held, site, reason, since, until, settings)
        if not chosen:
            _report([], "release", as_json)
            return
        _confirm(len(chosen), "release", yes, as_json)
        with progress_bar(transient=True, disable=as_json) as bar:
            task = bar.add_task("re-offering quarantined files", total=len(chosen))
            results = release_entries(
                settings,
                chosen,
                actor=actors.operator(),
                progress=lambda _result: bar.advance(task),
            )
    except MedaiError as exc:
        raise fail(exc) from None
    _report(results, "release", as_json)
    if any(r.outcome in ("missing", "refused") for r in results):
        raise typer.Exit(EXIT_PROBLEM)


@quarantine_app.command("purge")
def purge_command(
    ids: IdsArgument = None,
    all_held: AllOption = False,
    site: SiteOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    yes: YesOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete the raw files of chosen held entries now; their rows stay for the accounting."""
    from medai.audit import actors
    from medai.catalog.db import create_engine_for
    from medai.collection.quarantine import Quarantine
    from medai.collection.quarantine_actions import discard_entries
    from medai.errors import MedaiError

    settings = _settings()
    try:
        chosen = _chosen(ids, all_held, site, reason, since, until, settings)
        if chosen:
            _confirm(len(chosen), "purge the raw files of", yes, as_json)
        engine = create_engine_for(settings.resolved_database_url)
        try:
            with err_console().status("deleting raw files"):
                results = discard_entries(
                    engine,
                    Quarantine(settings.resolved_quarantine_dir),
                    chosen,
                    actor=actors.operator(),
                )
        finally:
            engine.dispose()
    except MedaiError as exc:
        raise fail(exc) from None
    _report(results, "purge", as_json)


_OUTCOME_WORDS = {
    "released": "stored",
    "released-duplicate": "already stored (duplicate)",
    "requarantined": "quarantined again",
    "discarded": "raw file deleted",
    "missing": "raw file missing",
    "refused": "not releasable",
}


def _report(results: list[ActionResult], action: str, as_json: bool) -> None:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    if as_json:
        print_json({"action": action, "counts": counts, "entries": [r.to_dict() for r in results]})
        return
    out = console()
    if not results:
        out.print("no held entry matches: nothing was done")
        return
    table = Table(title=f"Quarantine {action}")
    for column in ("id", "site", "outcome", "reason"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for result in results:
        words = _OUTCOME_WORDS.get(result.outcome, result.outcome)
        table.add_row(*row(result.id, result.site, words, result.reason_code or ""))
    out.print(table)
    summary = ", ".join(f"{_OUTCOME_WORDS.get(k, k)}: {v}" for k, v in sorted(counts.items()))
    out.print(Text(summary))
    if counts.get("refused"):
        out.print(
            plain(
                "not releasable: edge inputs (the edge gateway re-sends them) and inputs "
                "refused unread, of which nothing was kept (the site re-sends them)",
                "yellow",
            )
        )
    if counts.get("missing"):
        out.print(plain("raw files missing: run `medai collect verify`", "yellow"))


def register(app: typer.Typer) -> None:
    """Add ``quarantine`` to ``medai collect``."""
    app.add_typer(quarantine_app, name="quarantine")
