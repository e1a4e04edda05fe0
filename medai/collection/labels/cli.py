"""``medai labels``: import a site's label sheet, re-match kept rows, show where labels stand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from medai.cli_support import (
    JsonFlag,
    catalog_session,
    console,
    fail,
    plain,
    print_json,
    progress_bar,
    require_campaign,
    row,
)

if TYPE_CHECKING:
    from rich.console import Console

    from medai.collection.labels import LabelImportResult, LabelStatus, RematchResult

__all__ = ["labels_app", "register"]

labels_app = typer.Typer(
    name="labels",
    help="Label sheets: import a site's RIS export of findings and match it to the catalogued "
    "studies (only pseudonymized references are kept).",
    no_args_is_help=True,
)

# Rejected rows shown in the table; --json lists them all.
_SHOWN_REJECTED = 30


def register(app: typer.Typer) -> None:
    """Add the ``labels`` sub-app to the root ``medai`` app."""
    app.add_typer(labels_app, name="labels")


@labels_app.command("import")
def import_command(
    sheet: Annotated[
        Path,
        typer.Argument(
            metavar="SHEET",
            help="The label sheet: .csv (UTF-8 or Windows-1252; comma, semicolon or tab "
            "separated) or .xlsx (the first worksheet); the header is row 1.",
        ),
    ],
    site: Annotated[
        str,
        typer.Option(
            "--site",
            help="The campaign site id the sheet comes from (accession numbers are per site).",
        ),
    ],
    as_json: JsonFlag = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Import even if this very sheet (same sha256) was already imported for the "
            "site; its rows then come out as duplicates.",
        ),
    ] = False,
) -> None:
    """Import a site's label sheet: match its rows to catalogued studies and add their labels.

    Columns are read through the campaign's label mapping. The catalog keeps only the
    pseudonymized study reference and the findings of each row, never names, ids, report
    text or the sheet's name. Rows whose study has not arrived yet are kept and matched by
    `medai labels rematch`; a label that disagrees with one the study already has is
    flagged as a conflict, never overwritten. Importing the same sheet again changes
    nothing.
    """
    from rich.progress import MofNCompleteColumn, TimeRemainingColumn

    from medai.collection.labels import import_label_sheet
    from medai.errors import MedaiError, UnknownSite

    require_campaign()
    columns = (MofNCompleteColumn(), TimeRemainingColumn())
    with progress_bar(*columns, transient=True, disable=as_json) as progress:
        task = progress.add_task(f"matching label rows for {site}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            result = import_label_sheet(sheet, site, force=force, progress=advance)
        except UnknownSite as exc:
            progress.stop()
            raise fail(exc, "Give --site one of the campaign's site ids.") from None
        except MedaiError as exc:
            progress.stop()
            raise fail(exc) from None
    if as_json:
        print_json(result.to_dict())
    else:
        _print_import(console(), result)


def _print_import(out: Console, result: LabelImportResult) -> None:
    from rich.table import Table

    if result.previous_import is not None:
        out.print(
            Text(
                f"This sheet was already imported for site {result.site} (import "
                f"#{result.previous_import}): nothing changed. Use --force to import it "
                "again, or `medai labels rematch` to match its kept rows.",
                style="yellow",
            ),
            soft_wrap=True,
        )
        return
    counts = result.counts
    table = Table(
        title=plain(
            f"Label sheet for site {result.site} — import #{result.import_id} "
            f"(sha256 {result.sheet_sha256[:12]}…)"
        )
    )
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, value in (
        ("matched: labels added", counts.matched),
        ("duplicate: labels already known", counts.duplicate),
        ("conflict: flagged, not overwritten", counts.conflict),
        ("patient mismatch: not applied", counts.mismatch),
        ("unmatched: kept until the images arrive", counts.unmatched),
        ("rejected: not imported", len(result.rejected)),
    ):
        table.add_row(*row(label, value))
    table.add_row(plain("rows in the sheet", "bold"), plain(result.rows, "bold"))
    out.print(table)
    if result.rejected:
        rejected = Table(title="Rejected rows (row 1 is the header)")
        rejected.add_column("row", justify="right")
        rejected.add_column("reason")
        for rejected_row in result.rejected[:_SHOWN_REJECTED]:
            rejected.add_row(*row(rejected_row.row, rejected_row.reason))
        out.print(rejected)
        if len(result.rejected) > _SHOWN_REJECTED:
            more = len(result.rejected) - _SHOWN_REJECTED
            out.print(f"… and {more} more (--json lists them all)")
        out.print("Fix these rows in the sheet and import it again; the rest is kept.")
    if counts.unmatched:
        out.print(
            f"{counts.unmatched} row(s) wait for their studies: `medai labels rematch` "
            "matches them once the images are catalogued."
        )
    if counts.conflict or counts.mismatch:
        out.print("See the conflicts with `medai labels status`.")
    out.print(f"{result.labels_added} labels added, {result.conflicts_flagged} conflicts flagged.")


@labels_app.command("rematch")
def rematch_command(
    as_json: JsonFlag = False,
) -> None:
    """Match the kept rows of earlier sheets whose studies have been catalogued since.

    The same rules as at import apply (patient check, duplicates, conflicts). Safe to run
    any time; it changes nothing when no kept row has found its study.
    """
    from sqlalchemy import func, select

    from medai.audit import actors
    from medai.catalog.models import LabelRow
    from medai.collection.labels import rematch_labels

    require_campaign()
    with catalog_session(write=True) as session:
        result = rematch_labels(session, actor=actors.operator())
        waiting = session.scalar(
            select(func.count()).select_from(LabelRow).where(LabelRow.status == "unmatched")
        )
    if as_json:
        print_json({**result.to_dict(), "still_unmatched": int(waiting or 0)})
    else:
        _print_rematch(console(), result, int(waiting or 0))


def _print_rematch(out: Console, result: RematchResult, waiting: int) -> None:
    from rich.table import Table

    if result.by_site:
        table = Table(title="Kept label rows that found their study")
        for column in ("site", "matched", "duplicate", "conflict", "mismatch"):
            table.add_column(column, justify="left" if column == "site" else "right")
        for site, counts in sorted(result.by_site.items()):
            table.add_row(
                *row(site, counts.matched, counts.duplicate, counts.conflict, counts.mismatch)
            )
        out.print(table)
    out.print(
        f"{result.rows} row(s) matched: {result.labels_added} labels added, "
        f"{result.conflicts_flagged} conflicts flagged; {waiting} row(s) still wait for "
        "their studies."
    )


@labels_app.command("status")
def status_command(
    site: Annotated[str | None, typer.Option("--site", help="Show only this site.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Label rows per site (matched, duplicate, conflict, mismatch, unmatched) and conflicts.

    Conflicts are listed by pseudonymized study UID and finding, with the value kept and
    every value the sheets gave.
    """
    from medai.collection.labels import label_status

    require_campaign()
    with catalog_session() as session:
        status = label_status(session)
    if site is not None:
        known = [s.site for s in status.sites]
        if site not in known:
            raise fail(
                f"unknown site {site!r}; the campaign's sites are: {', '.join(known) or 'none'}"
            )
        status.sites = [s for s in status.sites if s.site == site]
        status.conflicts = [c for c in status.conflicts if c.site == site]
    if as_json:
        print_json(status.to_dict())
    else:
        _print_status(console(), status)


labels_app.command("show", hidden=True, help="Same as `medai labels status`.")(status_command)


def _print_status(out: Console, status: LabelStatus) -> None:
    from rich import box
    from rich.table import Table

    # Compact (one space between columns, no edges) so nine columns fit 80 characters.
    table = Table(
        title="Label sheets by site", box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False
    )
    columns = (
        "site",
        "sheets",
        "rows",
        "matched",
        "duplicate",
        "conflict",
        "mismatch",
        "unmatched",
        "labelled",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "site" else "right", no_wrap=True)
    for s in status.sites:
        r = s.rows
        table.add_row(
            *row(
                s.site,
                s.imports,
                r.total,
                r.matched,
                r.duplicate,
                r.conflict,
                r.mismatch,
                r.unmatched,
                f"{s.labelled_studies}/{s.studies}",
            )
        )
    out.print(table)
    if status.conflicts:
        conflicts = Table(title="Conflicting labels (value kept until a steward decides)")
        for column in ("site", "study UID (pseudonymized)", "finding", "kept", "values given"):
            conflicts.add_column(column)
        for c in status.conflicts:
            conflicts.add_row(
                *row(c.site, c.study_uid, c.finding, c.kept, ", ".join(map(str, c.values)))
            )
        out.print(conflicts)
    else:
        out.print("No conflicting labels.")
    if status.mismatches:
        mismatches = Table(title="Rows refused: the patient id is not the study's patient")
        for column in ("site", "import", "row", "study UID (pseudonymized)"):
            mismatches.add_column(column)
        for m in status.mismatches:
            mismatches.add_row(*row(m.site, f"#{m.import_id}", m.row, m.study_uid))
        out.print(mismatches)
    out.print("labelled: studies with at least one label / studies catalogued.")
