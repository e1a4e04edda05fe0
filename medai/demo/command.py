"""``medai demo``: three hospitals collecting, a model trained, a clinician answered.

The steps, each the real component a deployment uses, on embedded defaults (SQLite, the
local store, MLflow on SQLite under ``MEDAI_HOME``):

1. the demo campaign (``collection/demo-campaign.toml``) set up with today as day N;
2. synthetic studies of three sites, PHI planted, as the hospitals would send them;
3. the days before today replayed through the ingest pipeline (:mod:`medai.demo.timeline`);
4. today: ``medai collect listen`` started, two sites pushing over C-STORE;
5. the third site's hand-over imported as a folder (with junk that ends quarantined);
6. every site's label sheet imported and linked;
7. ``medai campaign status``, then the accounting and the audit chain verified;
8. a snapshot, the demo model trained and tracked in MLflow, promoted through its gate;
9. ``medai serve`` started, a study sent as a clinician would, the findings printed;
10. the last site behind ``medai edge`` (site kit, ``edge init``, ``edge run``), its link to
    the centre degraded then cut: silent on the dashboard with a growing outbox, then caught
    up, and ``medai collect reconcile`` at 0 differences (:mod:`medai.demo.edge_stage`);
11. the dashboard and MLflow UI addresses, a summary, and the servers left running until
    Ctrl-C (``--exit`` stops at the end).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from medai.errors import DemoFailed

__all__ = ["demo_command"]

# No markup: paths, site names and error messages print verbatim; styles come from Text.
console = Console(markup=False)
DEFAULT_CAMPAIGN = Path("collection/demo-campaign.toml")
DEFAULT_MODEL = Path("models/chest-xray-triage")


def _step(number: int, text: str) -> None:
    console.rule(Text(f"{number}. {text}", style="bold cyan"))


def demo_command(
    campaign_file: Annotated[
        Path,
        typer.Option("--campaign", help="Campaign definition to set up.", exists=True,
                     dir_okay=False),
    ] = DEFAULT_CAMPAIGN,
    model_dir: Annotated[
        Path, typer.Option("--model", help="Model directory (config.toml) to train.", exists=True)
    ] = DEFAULT_MODEL,
    studies: Annotated[
        int, typer.Option("--studies", min=4, help="Synthetic studies per site.")
    ] = 200,
    day: Annotated[
        int, typer.Option("--day", min=2, help="Which day of the campaign today is.")
    ] = 60,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic generator.")] = 2026,
    image_size: Annotated[
        int, typer.Option("--image-size", min=16, help="Rows and columns of the synthetic images.")
    ] = 192,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Training epochs (default: the config).")
    ] = None,
    override_gate_reason: Annotated[
        str | None,
        typer.Option(
            "--override-gate-reason",
            help="Promote even if the gate refuses, with this reason: audited and tagged on "
            "the version, as `medai models promote --override-gate --reason` does.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Import worker processes.")] = 0,
    serve_port: Annotated[int, typer.Option("--serve-port", help="Port of `medai serve`.")] = 8000,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="MLflow UI port.")] = 5000,
    exit_at_end: Annotated[
        bool, typer.Option("--exit", help="Stop the servers and exit at the end (for scripts).")
    ] = False,
) -> None:  # fmt: skip
    """Run the whole pilot end to end on synthetic data: collect, train, serve, predict."""
    from medai.config import get_settings
    from medai.demo.services import Server
    from medai.errors import MedaiError

    settings = get_settings()
    servers: list[Server] = []
    started = time.monotonic()
    try:
        results = _run(
            settings,
            servers,
            campaign_file=campaign_file,
            model_dir=model_dir,
            studies=studies,
            day=day,
            seed=seed,
            image_size=image_size,
            epochs=epochs,
            override_gate_reason=override_gate_reason,
            workers=workers,
            serve_port=serve_port,
            mlflow_port=mlflow_port,
        )
    except (MedaiError, DemoFailed, RuntimeError) as exc:
        console.print(Text.assemble(("demo stopped:", "bold red"), f" {exc}"))
        for server in servers:
            server.stop()
        raise typer.Exit(1) from exc
    summary = Table(title=f"medai demo: done in {time.monotonic() - started:.0f} s")
    summary.add_column("stage")
    summary.add_column("result")
    for stage, result in results:
        summary.add_row(stage, result)
    console.print(summary)
    console.print(Text("demo finished", style="bold green"))
    if exit_at_end:
        for server in servers:
            server.stop()
        return
    console.print("servers keep running; Ctrl-C stops them")
    try:
        while all(server.alive() for server in servers):
            time.sleep(1)
        console.print(
            Text.assemble(
                ("a server exited", "red"), f"; see the logs under {settings.resolved_home}"
            )
        )
    except KeyboardInterrupt:
        console.print("stopping the servers")
    finally:
        for server in servers:
            server.stop()


def _run(settings: Any, servers: list[Any], **options: Any) -> list[tuple[str, str]]:
    from medai.demo import edge_stage, model_stages, stages

    step, out = _step, console
    campaign = stages.set_up_campaign(
        settings, options["campaign_file"], options["day"], step=step, console=out
    )
    sites = stages.generate_sites(
        settings, campaign, options["studies"], options["seed"], options["image_size"],
        step=step, console=out,
    )  # fmt: skip
    results = [
        ("campaign", campaign.summary),
        ("synthetic studies", f"{sites.synth.instances} instances, {sites.synth.studies} studies"),
        ("replayed days", stages.replay_past(settings, campaign, sites, step, out)),
        ("C-STORE today", stages.push_today(settings, campaign, sites, servers, step, out)),
        ("folder import",
         stages.import_folder(settings, campaign, sites, options["workers"], step, out)),
        ("label sheets", stages.import_labels(settings, sites, step, out)),
        ("progress", stages.show_progress(settings, step, out)),
        ("accounting", stages.verify(settings, step, out)),
    ]  # fmt: skip
    model = model_stages.train_model(
        settings, options["model_dir"], options["epochs"], options["image_size"], step, out
    )
    results += [
        ("snapshot", model.snapshot_summary),
        ("training", model.summary),
        (
            "promotion",
            model_stages.promote_model(model, options["override_gate_reason"], step, out),
        ),
    ]
    service = model_stages.serve_and_predict(
        settings, model, sites, servers, options["serve_port"], step, out,
        extra_env=edge_stage.centre_env(),
    )  # fmt: skip
    edge = edge_stage.run_edge(
        settings, campaign, servers, centre_url=service.base_url,
        steward_key=service.steward_key, seed=options["seed"],
        image_size=options["image_size"], step=step, console=out,
    )  # fmt: skip
    sites_now = model_stages.restart_service(service, servers, edge_stage.centre_env(), out)
    web = model_stages.start_mlflow_ui(
        settings, servers, options["mlflow_port"], service, step, out
    )
    results += [
        ("prediction", service.summary),
        ("edge", edge),
        ("sites now", sites_now),
        ("web", web),
    ]
    return results
