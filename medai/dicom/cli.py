"""The ``medai synth`` command: write synthetic site hand-overs for tests and demos."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DifficultyName", "register", "synth_command"]


class DifficultyName(StrEnum):
    """The presets of :mod:`medai.dicom.synth.difficulty` (named here: ``--help`` stays light)."""

    hard = "hard"
    moderate = "moderate"
    tiny = "tiny"


def synth_command(
    out_dir: Annotated[
        Path,
        typer.Argument(metavar="OUT_DIR", help="Folder to write <site>/... into."),
    ],
    studies: Annotated[
        int, typer.Option("--studies", min=0, help="Number of studies over all sites.")
    ] = 20,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed: the same seed writes byte-identical files.")
    ] = 0,
    site: Annotated[
        list[str] | None,
        typer.Option(
            "--site", help="Site id (repeat for several). Default: site-a, site-b, site-c."
        ),
    ] = None,
    size: Annotated[
        int, typer.Option("--size", min=16, max=2048, help="Rows and columns of each image.")
    ] = 128,
    ct_slices: Annotated[
        int, typer.Option("--ct-slices", min=0, help="Slices per CT series (0: no CT).")
    ] = 8,
    ct_every: Annotated[
        int,
        typer.Option(
            "--ct-every",
            min=1,
            help="At a site with a CT scanner, one study in N is a CT series (1: every study, "
            "a CT campaign). Default 4.",
        ),
    ] = 4,
    difficulty: Annotated[
        DifficultyName,
        typer.Option(
            "--difficulty",
            help="How hard the findings are: hard (default; ideal AUROC about 0.9), moderate, "
            "or tiny (for 32-48 px images). OUT_DIR/labels/ground_truth.json has the ceiling.",
        ),
    ] = DifficultyName.hard,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
    ] = False,
) -> None:
    """Write synthetic studies with planted PHI, as sites hand them over.

    Chest radiographs (CR/DX) with drawn-in findings (nodule, effusion,
    cardiomegaly) and small CT series, each site in its own vendor dialect
    and transfer syntaxes. OUT_DIR/labels/<site>.csv lists the findings of
    the site's chest studies (radiologists' reads, with the site's label
    noise); OUT_DIR/labels/ground_truth.json the ideal observer's AUROC per
    finding and each study's latent values. CT series carry the patient's
    nodule as a 3-D lesion; their labels are in OUT_DIR/labels/<site>-ct.csv
    and their ceiling in the ground truth's "ct" section. Every file holds
    (fake) PHI, like a real one.
    """
    # Heavy imports here, so that `medai --help` stays instant.
    # The rich helpers of medai.cli_support sit above the catalog, which dicom sits below:
    # the same settings here (no markup, so paths print verbatim), without the import.
    import json

    from pydicom.uid import UID
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table
    from rich.text import Text

    from medai.dicom.synth import generate

    sites = tuple(site) if site else ("site-a", "site-b", "site-c")
    if len(set(sites)) != len(sites):
        raise typer.BadParameter("each --site may be given once", param_hint="--site")
    out = Console(markup=False, highlight=False)
    with Progress(
        TextColumn("writing studies"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        disable=as_json,
    ) as progress:
        task = progress.add_task("writing studies", total=studies)
        result = generate(
            out_dir,
            studies=studies,
            seed=seed,
            sites=sites,
            image_size=size,
            ct_slices=ct_slices,
            ct_every=ct_every,
            progress=lambda done, total: progress.update(task, completed=done),
            difficulty=difficulty.value,
        )
    syntaxes = sorted(UID(t).name for t in result.transfer_syntaxes)
    if as_json:
        document = {
            "out_dir": str(out_dir),
            "studies": result.studies,
            "patients": result.patients,
            "instances": result.instances,
            "files": len(result.files),
            "label_sheets": {site: str(path) for site, path in result.label_sheets.items()},
            "ct_label_sheets": {s: str(path) for s, path in result.ct_label_sheets.items()},
            "transfer_syntaxes": syntaxes,
            "difficulty": result.difficulty,
            "ground_truth": str(result.ground_truth),
        }
        typer.echo(json.dumps(document, sort_keys=True))
        return
    table = Table(title=Text(f"Synthetic hand-over in {out_dir}"))
    for column in ("site", "studies", "instances", "label sheet"):
        table.add_column(column, justify="left" if column in ("site", "label sheet") else "right")
    for site_id, sheet in result.label_sheets.items():
        records = [r for r in result.study_records if r.site == site_id]
        instances = sum(len(r.files) for r in records)
        table.add_row(site_id, str(len(records)), str(instances), str(sheet))
    out.print(table)
    out.print(
        f"{result.studies} studies of {result.patients} patients, {result.instances} "
        f"instances in {len(result.files)} files, {len(result.label_sheets)} label sheets; "
        f"transfer syntaxes: {', '.join(syntaxes)}"
    )
    for site_id, sheet in result.ct_label_sheets.items():
        out.print(f"CT label sheet of {site_id}: {sheet}")
    out.print(f"difficulty {result.difficulty}; ground truth in {result.ground_truth}")


def register(app: typer.Typer) -> None:
    """Add ``synth`` to the root ``medai`` app."""
    app.command("synth")(synth_command)
