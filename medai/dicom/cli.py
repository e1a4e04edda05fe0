"""The ``medai synth`` command: write synthetic site hand-overs for tests and demos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register", "synth_command"]


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
) -> None:
    """Write synthetic studies with planted PHI, as sites hand them over.

    Chest radiographs (CR/DX) with drawn-in findings (nodule, effusion,
    cardiomegaly) and small CT series, each site in its own vendor dialect
    and transfer syntaxes. OUT_DIR/labels/<site>.csv lists the findings of
    the site's chest studies. Every file holds (fake) PHI, like a real one.
    """
    # Heavy imports here, so that `medai --help` stays instant.
    from pydicom.uid import UID
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from medai.dicom.synth import generate

    console = Console()
    sites = tuple(site) if site else ("site-a", "site-b", "site-c")
    if len(set(sites)) != len(sites):
        raise typer.BadParameter("each --site may be given once", param_hint="--site")
    with Progress(
        TextColumn("writing studies"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task("synth", total=studies)
        result = generate(
            out_dir,
            studies=studies,
            seed=seed,
            sites=sites,
            image_size=size,
            ct_slices=ct_slices,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    table = Table(title=f"Synthetic hand-over in {out_dir}")
    for column in ("site", "studies", "instances", "label sheet"):
        table.add_column(column, justify="left" if column in ("site", "label sheet") else "right")
    for site_id, sheet in result.label_sheets.items():
        records = [r for r in result.study_records if r.site == site_id]
        table.add_row(
            site_id,
            str(len(records)),
            str(sum(len(r.files) for r in records)),
            str(sheet),
        )
    console.print(table)
    console.print(
        f"{result.studies} studies of {result.patients} patients, {result.instances} "
        f"instances in {len(result.files)} files, {len(result.label_sheets)} label sheets; "
        f"transfer syntaxes: {', '.join(sorted(UID(t).name for t in result.transfer_syntaxes))}"
    )


def register(app: typer.Typer) -> None:
    """Add ``synth`` to the root ``medai`` app."""
    app.command("synth")(synth_command)
