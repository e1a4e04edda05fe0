"""``medai backup create|list|verify|restore|prune``: backups of one deployment, restored."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from medai.cli_support import EXIT_PROBLEM, JsonFlag

if TYPE_CHECKING:
    from medai.ops.backup_set import Phase

__all__ = ["backup_app", "register"]

backup_app = typer.Typer(
    name="backup",
    help="Consistent backups of the deployment (catalog, store, serving and MLflow state, "
    "audit anchor) into a folder, verified and restored. The campaign key is never in a "
    "backup: keep its escrow (`medai campaign key export`) apart.",
    no_args_is_help=True,
)

_T = TypeVar("_T")

Dest = Annotated[
    Path,
    typer.Argument(
        metavar="DEST",
        help="The backup folder (new, empty, or holding earlier backups: objects are shared).",
    ),
]
BackupId = Annotated[
    str | None,
    typer.Option("--id", metavar="ID", help="The backup set (`medai backup list`); the newest."),
]
KeepDaily = Annotated[
    int | None,
    typer.Option(
        "--keep-daily", min=0, metavar="N", help="Keep the newest backup of each of N days."
    ),
]
KeepWeekly = Annotated[
    int | None,
    typer.Option(
        "--keep-weekly", min=0, metavar="M", help="Keep the newest backup of each of M weeks."
    ),
]


@contextmanager
def _bar(disable: bool) -> Iterator[Phase]:
    from rich.progress import MofNCompleteColumn

    from medai.cli_support import progress_bar

    # Only on a terminal: a bar redrawn into a log file or a pipe is noise.
    shown = not disable and sys.stderr.isatty()
    with progress_bar(MofNCompleteColumn(), transient=True, disable=not shown) as bar:

        def phase(description: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        yield phase


def _run(action: Callable[[], _T]) -> _T:
    from medai.cli_support import fail
    from medai.errors import MedaiError

    try:
        return action()
    except (MedaiError, OSError) as exc:
        raise fail(exc) from None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@backup_app.command("create")
def create_command(
    dest: Dest,
    keep_daily: KeepDaily = None,
    keep_weekly: KeepWeekly = None,
    link: Annotated[
        bool,
        typer.Option(
            "--link",
            help="Hard-link store objects instead of copying them when DEST is on the store's "
            "filesystem (fast, but guards against deletion only, not against a failing disk).",
        ),
    ] = False,
    include_quarantine: Annotated[
        bool,
        typer.Option(
            "--include-quarantine",
            help="Also back up the raw quarantined files. They hold PHI: by default only "
            "their reasons are kept and a restore marks them released.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Back up the running deployment into DEST; only objects DEST lacks are copied."""
    from medai.cli_support import console, plain, print_json, require_campaign
    from medai.ops.backup import create_backup

    require_campaign()
    with _bar(as_json) as phase:
        result = _run(
            lambda: create_backup(
                dest,
                keep_daily=keep_daily,
                keep_weekly=keep_weekly,
                link=link,
                include_quarantine=include_quarantine,
                progress=phase,
            )
        )
    if as_json:
        print_json(result)
        return
    out = console()
    out.print(
        plain(
            f"Backup {result.id} written to {result.path} in {result.seconds:.1f} s: "
            f"{result.counts.get('instances', 0)} instances, {result.objects} objects "
            f"({result.objects_copied} copied, {result.objects_present} already there, "
            f"{_size(result.bytes_copied)}), {result.files} other files."
        ),
        soft_wrap=True,
    )
    out.print(plain(f"Audit anchor {result.anchor}"), soft_wrap=True)
    if result.key_fingerprint:
        out.print(
            plain(
                f"The campaign key (fingerprint {result.key_fingerprint}) is not in the backup: "
                "keep its escrow (`medai campaign key export`) somewhere else."
            ),
            soft_wrap=True,
        )
    if result.pruned:
        out.print(plain(f"Pruned {len(result.pruned)}: {', '.join(result.pruned)}"))


@backup_app.command("list")
def list_command(dest: Dest, as_json: JsonFlag = False) -> None:
    """List the backup sets in DEST, oldest first."""
    from rich import box
    from rich.table import Table

    from medai.cli_support import console, print_json, row
    from medai.ops.backup import list_backups

    sets = _run(lambda: list_backups(dest))
    if as_json:
        print_json(sets)
        return
    if not sets:
        console().print("No backup in this folder yet.")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in ("id", "created (UTC)", "db", "instances", "objects", "size"):
        table.add_column(column, no_wrap=True)
    for entry in sets:
        table.add_row(
            *row(
                entry["id"],
                str(entry["created_at"])[:16].replace("T", " "),
                "pg" if entry["database"]["kind"] == "postgresql" else "sqlite",
                entry.get("counts", {}).get("instances", 0),
                entry["object_count"],
                _size(int(entry["object_bytes"])),
            )
        )
    console().print(table)


@backup_app.command("verify")
def verify_command(
    dest: Dest,
    backup_id: BackupId = None,
    all_sets: Annotated[bool, typer.Option("--all", help="Verify every set in DEST.")] = False,
    scratch_database_url: Annotated[
        str | None,
        typer.Option(
            "--scratch-database-url",
            metavar="URL",
            help="PostgreSQL backups: an empty database to restore each dump into and verify "
            "its audit chain up to the anchor (emptied again afterwards).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash every object and file of a backup, check its dump and its audit chain.

    Exits 1 naming each problem (a damaged object, a truncated dump). Recorded in the
    audit log of this deployment's catalog when there is one.
    """
    from rich.text import Text

    from medai.cli_support import console, err_console, plain, print_json
    from medai.config import get_settings
    from medai.ops.backup_verify import record_verified, verify_backup

    with _bar(as_json) as phase:
        result = _run(
            lambda: verify_backup(
                dest,
                backup_id=backup_id,
                all_sets=all_sets,
                scratch_database_url=scratch_database_url,
                progress=phase,
            )
        )
    try:
        record_verified(get_settings(), dest, result)
    except Exception:  # noqa: BLE001 - the verdict stands even where no catalog can be written
        pass
    if as_json:
        data: dict[str, Any] = {
            "ok": result.ok,
            "sets": result.sets,
            "objects_checked": result.objects_checked,
            "problems": result.problems,
        }
        print_json(data)
    elif result.ok:
        console().print(
            Text.assemble(
                ("OK", "bold green"),
                f": {len(result.sets)} backup set(s), {result.objects_checked} objects re-hashed",
            )
        )
    else:
        out = err_console()
        for backup_id_, problems in result.problems.items():
            for problem in problems:
                out.print(plain(f"{backup_id_}: {problem}", "red"), soft_wrap=True)
        out.print(
            plain(
                f"{result.problem_count} problem(s): restore another set (`--id`), and make a "
                "new backup into a healthy folder"
            ),
            soft_wrap=True,
        )
    if not result.ok:
        raise typer.Exit(EXIT_PROBLEM)


@backup_app.command("restore")
def restore_command(
    dest: Dest,
    home: Annotated[
        Path,
        typer.Option(
            "--home",
            metavar="NEW",
            help="The new home to restore into (new or empty; it may hold the campaign key).",
        ),
    ],
    backup_id: BackupId = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            metavar="URL",
            help="For a PostgreSQL backup: an existing, empty database to restore the catalog "
            "into (then run with MEDAI_DATABASE_URL set to it).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup set of DEST into a new home, then check its audit chain."""
    from medai.cli_support import console, err_console, plain, print_json
    from medai.ops.backup_restore import restore_backup

    with _bar(as_json) as phase:
        result = _run(
            lambda: restore_backup(
                dest, home, backup_id=backup_id, database_url=database_url, progress=phase
            )
        )
    if as_json:
        print_json(result)
        return
    out = console()
    out.print(
        plain(
            f"Restored backup {result.id} into {result.home} in {result.seconds:.1f} s: "
            f"{result.counts.get('instances', 0)} instances, {result.objects} objects, "
            f"{result.files} other files; catalog {result.database_url}."
        ),
        soft_wrap=True,
    )
    if result.quarantine_released:
        out.print(
            plain(
                f"{result.quarantine_released} quarantined file(s) were not in the backup "
                "(PHI): their rows are marked released."
            ),
            soft_wrap=True,
        )
    env = f"MEDAI_HOME={result.home}"
    if database_url:
        env += " MEDAI_DATABASE_URL=..."
    if result.key_status == "missing":
        err_console().print(
            plain(
                f"The campaign key is not there yet: restore it from its escrow with "
                f"`{env} medai campaign key import ESCROW` (fingerprint "
                f"{result.key_fingerprint}) before importing anything."
            ),
            soft_wrap=True,
        )
    out.print(
        plain(
            f"Check it: `{env} medai collect verify` and "
            f"`{env} medai audit verify --anchor {result.anchor}`."
        ),
        soft_wrap=True,
    )


@backup_app.command("prune")
def prune_command(
    dest: Dest,
    keep_daily: KeepDaily = None,
    keep_weekly: KeepWeekly = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove the backup sets the retention does not keep (the newest is always kept)."""
    from medai.cli_support import console, fail, plain, print_json
    from medai.ops.backup import prune_backups

    if keep_daily is None and keep_weekly is None:
        raise fail("say what to keep", "Give --keep-daily N and/or --keep-weekly M.")
    result = _run(
        lambda: prune_backups(dest, keep_daily=keep_daily or 0, keep_weekly=keep_weekly or 0)
    )
    if as_json:
        print_json(result)
        return
    console().print(
        plain(
            f"Kept {len(result.kept)} backup set(s), removed {len(result.removed)}"
            + (f" ({', '.join(result.removed)})" if result.removed else "")
            + f"; freed {result.objects_freed} objects ({_size(result.bytes_freed)})."
        ),
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``backup`` to the root app."""
    app.add_typer(backup_app, name="backup")
