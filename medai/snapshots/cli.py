"""``medai snapshot``: freeze a labelled, split dataset from the catalog; list, show, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from medai.cli_support import (
    JsonFlag,
    console,
    fail,
    plain,
    print_json,
    progress_bar,
    require_campaign,
    row,
)

if TYPE_CHECKING:
    from medai.snapshots import SnapshotInfo

__all__ = ["register", "snapshot_app"]

snapshot_app = typer.Typer(
    name="snapshot",
    help="Dataset snapshots: freeze de-identified instances, labels and patient-level "
    "train/val/test splits into a hashed manifest; list, show and export them.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``snapshot`` sub-app to the root ``medai`` app."""
    app.add_typer(snapshot_app, name="snapshot")


def _run(call: Any) -> Any:
    """Call ``call()`` on a set-up catalog; a medai error ends the command with its message."""
    from medai.errors import MedaiError

    require_campaign()
    try:
        return call()
    except MedaiError as exc:
        raise fail(exc) from None


@snapshot_app.command("create")
def create_command(
    name: Annotated[
        str,
        typer.Option(
            "--name",
            help="New snapshot name: lower-case letters, digits, '-', '_' (e.g. chest-v1).",
        ),
    ],
    site: Annotated[
        list[str] | None,
        typer.Option("--site", help="Only this campaign site (repeat for several); default all."),
    ] = None,
    modality: Annotated[
        list[str] | None,
        typer.Option("--modality", help="Only this modality, e.g. DX (repeatable); default all."),
    ] = None,
    body_part: Annotated[
        str | None, typer.Option("--body-part", help="Only this body part, e.g. CHEST.")
    ] = None,
    finding: Annotated[
        list[str] | None,
        typer.Option(
            "--finding",
            help="Label column to include (repeatable); default every finding of the campaign.",
        ),
    ] = None,
    labelled_only: Annotated[
        bool,
        typer.Option(
            "--labelled-only/--all-studies",
            help="Take only studies with at least one non-conflicting label among the findings "
            "(default), or every matching study (missing labels are <NA>). Labels flagged as "
            "conflicts count as missing.",
        ),
    ] = True,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Key of the patient split (keep it for a locked test set)."),
    ] = 0,
    split: Annotated[
        str,
        typer.Option("--split", help="Train,val,test fractions of patients (sum 1)."),
    ] = "0.7,0.15,0.15",
    level: Annotated[
        str,
        typer.Option(
            "--level",
            help="instance: one row per instance (default). series: one row per series "
            "assembled into a volume (slices ordered along the normal, spacing checked; "
            "series with gaps, duplicates or mixed geometry are left out and listed); "
            "without --modality it takes CT, MR and PT.",
        ),
    ] = "instance",
    as_json: JsonFlag = False,
) -> None:
    """Freeze a dataset: a parquet manifest, keyed patient-level splits and a content hash.

    One manifest row per de-identified instance (pseudonymized ids, store key, site,
    normalized metadata, one 0/1/<NA> column per finding, split). No patient is in two
    splits; a patient's split is a keyed hash of its pseudonym under the seed, so it never
    moves as data arrives, and snapshots of one seed and test fraction share a locked test
    set (shown with what it shares with the earlier snapshot). The same catalog, query and
    seed always give the same content hash. Snapshots are immutable.

    With --level series, one row per series instead: its store keys in slice order
    (store_keys), its number of slices and its spacing in mm ("z,y,x"); each refused
    series is printed with its reason (e.g. missing-slice, mixed-orientation).
    """
    from medai.errors import SnapshotError
    from medai.snapshots import SnapshotQuery, create_snapshot, parse_fractions

    try:
        fractions = parse_fractions(split)
    except SnapshotError as exc:
        raise fail(exc) from None
    query = SnapshotQuery(
        sites=tuple(site or ()),
        modalities=tuple(modality or ()),
        body_part=body_part,
        findings=tuple(finding or ()),
        labelled_only=labelled_only,
        level=level.strip().lower(),
    )
    if query.level != "series":
        info: SnapshotInfo = _run(
            lambda: create_snapshot(name, query, seed=seed, fractions=fractions)
        )
    else:
        from rich.progress import MofNCompleteColumn

        with progress_bar(MofNCompleteColumn(), transient=True, disable=as_json) as bar:
            task = bar.add_task("reading series headers", total=None)
            info = _run(
                lambda: create_snapshot(
                    name,
                    query,
                    seed=seed,
                    fractions=fractions,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            )
    if as_json:
        print_json(info.to_dict())
        return
    _print_info(info)


@snapshot_app.command("list")
def list_command(
    as_json: JsonFlag = False,
) -> None:
    """List the snapshots, oldest first."""
    from medai.snapshots import list_snapshots

    infos: list[SnapshotInfo] = _run(list_snapshots)
    if as_json:
        print_json([info.to_dict() for info in infos])
        return
    if not infos:
        typer.echo("No snapshots yet: create one with `medai snapshot create --name NAME`.")
        return
    table = Table(title="Snapshots")
    for column in ("Name", "Created", "Patients", "Studies", "Instances", "Hash"):
        table.add_column(column)
    for info in infos:
        total = info.counts.get("total", {})
        table.add_row(
            *row(
                info.name,
                info.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                total.get("patients", ""),
                total.get("studies", ""),
                total.get("instances", ""),
                info.content_hash[:12],
            )
        )
    console().print(table)


@snapshot_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The snapshot.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a snapshot: query, seed, split fractions, counts per split and content hash."""
    from medai.snapshots import get_snapshot

    info: SnapshotInfo = _run(lambda: get_snapshot(name))
    if as_json:
        print_json(info.to_dict())
        return
    _print_info(info)


@snapshot_app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The snapshot.")],
    out_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="DIR",
            help="A new or empty directory for the partner's tree (or give --to instead).",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="DEST",
            help="Send it to DEST instead: a folder (DICOM media with a DICOMDIR), an "
            "http(s):// DICOMweb root (STOW-RS) or a DICOM node AE@HOST:PORT (C-STORE).",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="With --to URL: extra header 'Name: value'."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="With --to URL: bearer token (or set MEDAI_PULL_TOKEN, kept out of the "
            "shell history).",
        ),
    ] = None,
    ae_title: Annotated[
        str, typer.Option("--ae-title", help="With --to AE@HOST:PORT: medai's calling AE title.")
    ] = "MEDAI",
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file", metavar="PEM", help="With --to https://: the CA to verify it against."
        ),
    ] = None,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Attempts per request before stopping."),
    ] = 6,
    verify_find: Annotated[
        bool,
        typer.Option(
            "--verify-find",
            help="With --to AE@HOST:PORT: then ask the node (C-FIND) whether it holds every "
            "instance; what it lacks is sent again by the next run.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write a snapshot as a de-identified DICOM tree for sharing, or send it --to DEST.

    DIR: a tree (patient/study/series) beside manifest.parquet (hash-checked), manifest.csv
    (with each file's path) and snapshot.json (name, content hash, counts, query); refuses a
    non-empty directory. --to: a DICOMDIR folder (with the same manifests), a STOW-RS server
    or a C-STORE node; every instance is confirmed (re-hashed, or acknowledged by the
    receiver), and the same command run again after a stop sends only the rest. Every file
    is checked against its sha256 in the store.
    """
    from rich.progress import MofNCompleteColumn

    from medai.snapshots import export_snapshot, get_snapshot

    if (out_dir is None) == (to is None):
        raise fail(
            "give either DIR (the partner's tree) or --to DEST, not both",
            "e.g. `medai snapshot export chest-v1 ./out` or `... --to PACS@10.0.0.5:104`",
        )
    info: SnapshotInfo = _run(lambda: get_snapshot(name))
    total = int(info.counts.get("total", {}).get("instances", 0))
    if to is not None:
        _export_to(
            name, to, header, token, ae_title, ca_file, max_attempts, verify_find, total, as_json
        )
        return
    assert out_dir is not None
    with progress_bar(MofNCompleteColumn(), transient=True, disable=as_json) as bar:
        task = bar.add_task("exporting", total=total)
        result = _run(
            lambda: export_snapshot(
                name,
                out_dir,
                progress=lambda done, rows: bar.update(task, completed=done, total=rows),
            ),
        )
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(
        f"Exported snapshot {result.name}: {result.files} files, {result.bytes} bytes "
        f"to {result.out_dir} (content hash {result.content_hash})"
    )


def _export_to(
    name: str,
    to: str,
    header: list[str] | None,
    token: str | None,
    ae_title: str,
    ca_file: Path | None,
    max_attempts: int,
    verify_find: bool,
    total: int,
    as_json: bool,
) -> None:
    """``export --to DEST``: send, confirm, resume."""
    from rich.progress import MofNCompleteColumn, TimeElapsedColumn

    from medai.collection.receivers.cli import parse_header
    from medai.collection.receivers.dicomweb_retry import RetryPolicy
    from medai.config import get_settings
    from medai.snapshots.export import export_to

    headers = dict(parse_header(item) for item in header or ())
    settings = get_settings()
    if token is None and settings.pull_token is not None:
        token = settings.pull_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    columns = (MofNCompleteColumn(), TimeElapsedColumn())
    with progress_bar(*columns, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"exporting {name}", total=total)
        result = _run(
            lambda: export_to(
                name,
                to,
                settings=settings,
                headers=headers,
                ae_title=ae_title,
                retry=RetryPolicy(max_attempts=max_attempts),
                ca_file=ca_file,
                verify_find=verify_find,
                progress=lambda done, rows: bar.update(task, completed=done, total=rows),
            )
        )
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(
        f"Exported snapshot {result.name} to {result.destination} ({result.kind}): "
        f"{result.instances} instances confirmed ({result.sent} sent now, {result.already} "
        f"by an earlier run; {result.bytes} bytes; {result.retries} retries)"
    )


def _print_info(info: SnapshotInfo) -> None:
    out = console()
    out.print(Text.assemble(("Snapshot ", "bold"), (info.name, "bold cyan")))
    out.print(plain(f"Created {info.created_at.isoformat()} by {info.actor}"))
    out.print(plain(f"Content hash: {info.content_hash}"), soft_wrap=True)
    out.print(plain(f"Manifest: {info.manifest}"), soft_wrap=True)
    out.print(plain(f"Query: {json.dumps(info.query, sort_keys=True)}"), soft_wrap=True)
    fractions = ", ".join(f"{k} {v:g}" for k, v in info.fractions.items())
    out.print(plain(f"Seed {info.seed}; split fractions: {fractions}"))
    if info.test_set is not None:
        out.print(plain(_test_set_line(info.test_set)), soft_wrap=True)
    findings = list(info.query.get("findings", []))
    series = ("Series",) if info.level == "series" else ()
    table = Table(title="Counts")
    for column in ("Split", "Patients", "Studies", *series, "Instances", *findings):
        table.add_column(column)
    for split, counts in info.counts.items():
        positives = counts.get("positives", {})
        table.add_row(
            *row(
                split,
                counts["patients"],
                counts["studies"],
                *(counts.get("series", 0) for _ in series),
                counts["instances"],
                *(positives.get(f, 0) for f in findings),
            )
        )
    out.print(table)
    if findings:
        out.print(plain("Finding columns count positive studies.", "dim"))
    if info.level == "series":
        out.print(plain("One row per series; Instances counts their slices.", "dim"))
    for entry in info.excluded:
        out.print(
            plain(
                f"Series left out: {entry['series_uid']}: {entry['reason']} ({entry['message']})"
            ),
            soft_wrap=True,
        )


def _test_set_line(test_set: dict[str, Any]) -> str:
    """One line: the locked test set and what it shares with the earlier snapshot of it."""
    line = f"Locked test set {test_set['id']}: {test_set['patients']} test patients"
    earlier = test_set.get("earlier")
    if not earlier:
        return line + " (the first snapshot of this test set)"
    if earlier.get("unreadable"):
        return line + f"; the manifest of {earlier['snapshot']} could not be read to compare"
    return line + (
        f"; holds {earlier['present']} of the {earlier['test_patients']} test patients of "
        f"{earlier['snapshot']}, {earlier['still_test']} still in test, {earlier['moved']} moved"
    )
