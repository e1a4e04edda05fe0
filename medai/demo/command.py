"""``medai demo``: the main job end to end on embedded defaults (grows with each part of medai).

Today: a campaign from ``collection/``, synthetic studies from three sites with PHI
planted in them, each site's hand-over imported (de-identified, pseudonymized,
catalogued, the rest quarantined), then the accounting and the audit chain verified.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["demo_command", "register"]

console = Console()


def _step(number: int, text: str) -> None:
    console.rule(f"[bold cyan]{number}. {text}")


def demo_command(
    campaign_file: Path = typer.Option(
        Path("collection/example-campaign.toml"),
        "--campaign",
        help="Campaign definition to set up.",
        exists=True,
        dir_okay=False,
    ),
    studies: int = typer.Option(12, "--studies", min=1, help="Synthetic studies per site."),
    seed: int = typer.Option(2026, "--seed", help="Seed of the synthetic generator."),
    workers: int = typer.Option(0, "--workers", min=0, help="Import worker processes."),
) -> None:
    """Run the collection campaign end to end on synthetic data and prove the accounting."""
    from medai.catalog.db import create_engine_for, session_factory
    from medai.collection.accounting import verify_collection
    from medai.collection.audit import verify_audit_chain
    from medai.collection.campaign import init_campaign, load_campaign
    from medai.collection.folder_import import import_path
    from medai.config import get_settings
    from medai.dicom.synth import generate
    from medai.errors import MedaiError

    settings = get_settings()
    try:
        _step(1, f"campaign from {campaign_file}")
        definition = load_campaign(campaign_file)
        init_campaign(definition, settings)
        site_ids = [site.id for site in definition.sites]
        console.print(f"campaign {definition.name!r}, sites: {', '.join(site_ids)}")
        console.print(f"catalog: {settings.resolved_database_url}")

        _step(2, "synthetic studies with PHI planted, as the sites would hand them over")
        incoming = settings.resolved_home / "demo-incoming"
        synth = generate(incoming, studies=studies * len(site_ids), seed=seed, sites=site_ids)
        console.print(
            f"{synth.instances} instances in {synth.studies} studies of {synth.patients} "
            f"patients under {incoming}"
        )
        # Real hand-overs hold more than images: these must end quarantined, with a reason.
        first_site = incoming / site_ids[0]
        (first_site / "scanned-referral.txt").write_text("Referral letter, see attached scan.\n")
        cut = synth.files[0].read_bytes()
        (first_site / "copy-interrupted.dcm").write_bytes(cut[: len(cut) // 3])
        console.print(f"added a text file and a truncated copy to {first_site.name}'s hand-over")

        summary_table = Table(title="Import per site")
        for column in ("site", "inputs", "stored", "duplicate", "quarantined", "files/s"):
            summary_table.add_column(column, justify="right" if column != "site" else "left")
        _step(3, "import each site's folder (twice: the second run must add nothing)")
        for site_id in site_ids:
            for _attempt in range(2):
                summary = import_path(incoming / site_id, site_id, workers=workers)
                summary_table.add_row(
                    site_id,
                    str(summary.inputs),
                    str(summary.stored),
                    str(summary.duplicate),
                    str(sum(summary.quarantined.values())),
                    f"{summary.inputs / max(summary.seconds, 1e-9):.0f}",
                )
        console.print(summary_table)

        _step(4, "verify the accounting and the audit chain")
        report = verify_collection(settings)
        engine = create_engine_for(settings.resolved_database_url)
        with session_factory(engine)() as session:
            audit = verify_audit_chain(session)
    except MedaiError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc

    console.print(
        f"inputs {report.inputs} = stored {report.events.get('stored', 0)} + duplicate "
        f"{report.events.get('duplicate', 0)} + quarantined {report.events.get('quarantined', 0)}"
    )
    console.print(f"audit records: {audit.records}, chain {'intact' if audit.ok else 'BROKEN'}")
    if not report.ok or not audit.ok:
        for problem in report.problems:
            console.print(f"[red]problem:[/] {problem}")
        raise typer.Exit(1)
    console.print(
        "[bold green]demo finished[/]: `medai collect verify` and `medai audit verify` agree"
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
