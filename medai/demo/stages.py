"""The stages of ``medai demo``, one function each, each returning the line its summary shows.

Every stage calls the same functions as the command a user would run (``campaign init``,
``collect listen``, ``collect import``, ``labels import``, ``campaign status``, ``snapshot
create``, ``train``, ``models promote``, ``serve``), so the demo proves them together.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medai.config import Settings
from medai.demo.services import (
    Server,
    echo_ready,
    free_port,
    medai_command,
    push_cstore,
    server_env,
    wait_for_http,
)
from medai.demo.timeline import SitePlan, plans_by_site, replay, start_for_day

if TYPE_CHECKING:
    from medai.collection.campaign.definition import CampaignDefinition
    from medai.dicom.synth import SynthResult
    from medai.training.tracking import TrackedRun

Step = Callable[[int, str], None]

# How the demo's sites keep pace (see medai.demo.timeline): the third went quiet mid-way.
PACES = {"site-c": "stalled"}
LISTENER_AE = "MEDAI"
SNAPSHOT_PREFIX = "demo-"


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


# -- collection -----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoCampaign:
    definition: CampaignDefinition
    today: dt.date
    day: int

    @property
    def summary(self) -> str:
        return (
            f"{self.definition.name!r}, day {self.day} of {self.definition.length_days} "
            f"(started {self.definition.start_date})"
        )


def set_up_campaign(
    settings: Settings, campaign_file: Path, day: int, *, step: Step, console: Console
) -> DemoCampaign:
    """``medai campaign init`` of ``campaign_file`` with its start moved to make today ``day``."""
    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign

    step(1, f"campaign from {campaign_file}, today as day {day}")
    definition = load_campaign(campaign_file)
    if day > definition.length_days:
        raise ValueError(f"--day {day} is past the campaign's {definition.length_days} days")
    today = dt.datetime.now(dt.UTC).date()
    definition = definition.model_copy(update={"start_date": start_for_day(today, day)})
    init_campaign(definition, settings, actor="medai-demo")
    console.print(
        f"campaign {definition.name!r} started {definition.start_date}; sites: "
        + ", ".join(f"{site.id} ({site.name})" for site in definition.sites)
    )
    console.print(f"catalog {settings.resolved_database_url}, home {settings.resolved_home}")
    return DemoCampaign(definition, today, day)


@dataclass(frozen=True)
class DemoSites:
    synth: SynthResult
    plans: dict[str, SitePlan]
    incoming: Path


def generate_sites(
    settings: Settings,
    campaign: DemoCampaign,
    studies: int,
    seed: int,
    image_size: int,
    *,
    step: Step,
    console: Console,
) -> DemoSites:
    """Synthetic studies of every site, PHI planted, and when each one arrives."""
    from medai.dicom.synth import generate

    step(2, "synthetic studies with PHI planted, as the hospitals would send them")
    sites = [site.id for site in campaign.definition.sites]
    incoming = settings.resolved_home / "demo-incoming"
    with _bar(console) as bar:
        task = bar.add_task("generate", total=studies * len(sites), status="")
        synth = generate(
            incoming,
            studies=studies * len(sites),
            seed=seed,
            sites=sites,
            image_size=image_size,
            ct_slices=4,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    plans = plans_by_site(synth, day=campaign.day, paces=PACES)  # type: ignore[arg-type]
    console.print(
        f"{synth.instances} instances in {synth.studies} studies of {synth.patients} patients "
        f"under {incoming}"
    )
    return DemoSites(synth, plans, incoming)


def replay_past(
    settings: Settings, campaign: DemoCampaign, sites: DemoSites, step: Step, console: Console
) -> str:
    """The days before today: each site's earlier arrivals through the ingest pipeline."""
    from medai.collection.pipeline import IngestPipeline

    step(3, f"days 1-{campaign.day - 1}: the sites' earlier arrivals, replayed on their days")
    plans = list(sites.plans.values())
    for plan in plans:
        days = sorted(plan.past)
        span = f"days {days[0]}-{days[-1]}" if days else "no earlier days"
        console.print(f"{plan.site}: {plan.past_studies} studies over {span}")
    pipeline = IngestPipeline.from_settings(settings)
    pipeline.actor = "medai-demo"
    total = sum(len(s.files) for plan in plans for day in plan.past.values() for s in day)
    with _bar(console) as bar:
        task = bar.add_task("replay", total=total, status="")
        counts = replay(
            pipeline,
            plans,
            campaign.definition.start_date,
            progress=lambda n: bar.advance(task, n),
        )
    pipeline.engine.dispose()
    return f"{counts.stored} stored, {counts.duplicate} duplicate over {campaign.day - 1} days"


def push_today(
    settings: Settings,
    campaign: DemoCampaign,
    sites: DemoSites,
    servers: list[Server],
    step: Step,
    console: Console,
) -> str:
    """``medai collect listen``, and today's studies of every site but the last over C-STORE."""
    step(4, "today: `medai collect listen`, two hospitals' PACS pushing over C-STORE")
    port = free_port()
    listener = Server(
        "medai collect listen",
        medai_command("collect", "listen", "--host", "127.0.0.1", "--port", str(port),
                      "--ae-title", LISTENER_AE, "--quiet-seconds", "2"),
        server_env(settings),
        settings.resolved_home / "logs" / "listener.log",
    ).start()  # fmt: skip
    servers.append(listener)
    pushing = campaign.definition.sites[:-1]
    listener.wait_ready(echo_ready(port, pushing[0].ae_titles[0], LISTENER_AE))
    console.print(f"listening as {LISTENER_AE} on 127.0.0.1:{port} (log {listener.log})")
    sent_total = 0
    for site in pushing:
        files = [path for study in sites.plans[site.id].today for path in study.files]
        tool, sent = push_cstore(
            files, port=port, calling=site.ae_titles[0], called=LISTENER_AE
        )
        sent_total += sent
        console.print(f"{site.id} ({site.ae_titles[0]}): {sent} instances sent with {tool}")
    return f"{sent_total} instances from {', '.join(s.id for s in pushing)} on port {port}"


def import_folder(
    settings: Settings, campaign: DemoCampaign, sites: DemoSites, workers: int, step: Step,
    console: Console,
) -> str:  # fmt: skip
    """The last site hands over a folder (with junk that must end quarantined), imported twice."""
    from medai.collection.receivers.folder import import_path

    site = campaign.definition.sites[-1].id
    step(5, f"today: {site} hands over a folder; `medai collect import` (twice)")
    folder = sites.incoming / f"{site}-handover"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for study in sites.plans[site].today:
        for path in study.files:
            target = folder / path.relative_to(sites.incoming / site)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    # Real hand-overs hold more than images: these must end quarantined, with a reason.
    (folder / "scanned-referral.txt").write_text("Referral letter, see attached scan.\n")
    cut = sites.synth.files[0].read_bytes()
    (folder / "copy-interrupted.dcm").write_bytes(cut[: len(cut) // 3])
    lines = []
    for attempt in ("first", "again"):
        summary = import_path(folder, site, settings=settings, workers=workers or None)
        quarantined = sum(summary.quarantined.values())
        line = (
            f"{attempt}: {summary.inputs} files, {summary.stored} stored, {summary.duplicate} "
            f"duplicate, {quarantined} quarantined ({', '.join(sorted(summary.quarantined))})"
        )
        console.print(line)
        lines.append(line)
    return "; ".join(lines)


def import_labels(settings: Settings, sites: DemoSites, step: Step, console: Console) -> str:
    """``medai labels import`` of each site's RIS export, then a re-match of kept rows."""
    from medai.catalog.db import create_engine_for, session_factory
    from medai.collection.labels.sheets import import_label_sheet, rematch_labels

    step(6, "label sheets: each site's RIS export linked to its studies")
    table = Table()
    for column in ("site", "rows", "matched", "unmatched (kept)", "conflict"):
        table.add_column(column, justify="left" if column == "site" else "right")
    matched = rows = 0
    for site, sheet in sorted(sites.synth.label_sheets.items()):
        result = import_label_sheet(sheet, site, settings=settings, actor="medai-demo", force=True)
        counts = result.counts
        matched += counts.matched
        rows += result.rows
        table.add_row(site, str(result.rows), str(counts.matched), str(counts.unmatched),
                      str(counts.conflict))  # fmt: skip
    console.print(table)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session, session.begin():
        late = rematch_labels(session, actor="medai-demo")
    engine.dispose()
    if late.rows:
        console.print(f"{late.rows} kept rows matched on re-match")
    return f"{matched + late.rows} of {rows} rows linked"


def show_progress(settings: Settings, step: Step, console: Console) -> str:
    """``medai campaign status``: per-site KPIs, late sites first."""
    from medai.catalog.db import create_engine_for, session_factory
    from medai.collection.campaign.cli import print_status_report
    from medai.collection.campaign.progress import compute_progress

    step(7, "`medai campaign status`")
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        report = compute_progress(session)
    engine.dispose()
    print_status_report(report, console)
    sites = ", ".join(f"{site.site} {site.status}" for site in report.sites)
    return f"{report.status} overall; {sites}"


def verify(settings: Settings, step: Step, console: Console) -> str:
    """``medai collect verify`` and ``medai audit verify``."""
    from medai.audit import verify_audit_chain
    from medai.catalog.db import create_engine_for, session_factory
    from medai.collection.accounting import verify_collection

    step(8, "`medai collect verify` and `medai audit verify`")
    report = verify_collection(settings)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        audit = verify_audit_chain(session)
    engine.dispose()
    line = (
        f"inputs {report.inputs} = stored {report.events.get('stored', 0)} + duplicate "
        f"{report.events.get('duplicate', 0)} + quarantined {report.events.get('quarantined', 0)}"
        f"; audit chain of {audit.records} records {'intact' if audit.ok else 'BROKEN'}"
    )
    console.print(line)
    if not report.ok or not audit.ok:
        raise RuntimeError("accounting problems: " + "; ".join(report.problems))
    return line


# -- research -------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoModel:
    settings: Settings
    tracked: TrackedRun
    snapshot_summary: str
    model_dir: Path

    @property
    def summary(self) -> str:
        result = self.tracked.result
        table = result.evaluation.table
        pooled = table[table["site"] == "all"]
        aurocs = ", ".join(
            f"{row.label} {float(row.auroc):.3f} [{float(row.auroc_low):.3f}-"
            f"{float(row.auroc_high):.3f}]"
            for row in pooled.itertuples(index=False)
        )
        return (
            f"{self.tracked.model_name} v{self.tracked.model_version}, "
            f"{len(result.history)} epochs; test AUROC {aurocs}"
        )


def _free_snapshot_name(base: str, settings: Settings) -> str:
    from medai.snapshots.manifest import list_snapshots

    taken = {info.name for info in list_snapshots(settings)}
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def train_model(
    settings: Settings,
    model_dir: Path,
    epochs: int | None,
    image_size: int,
    step: Step,
    console: Console,
) -> DemoModel:
    """``medai snapshot create`` of the labelled radiographs, then ``medai train``."""
    from medai.snapshots.manifest import SnapshotQuery, create_snapshot
    from medai.training.config import apply_overrides, load_model_config
    from medai.training.tracking import train_tracked

    config = load_model_config(model_dir)
    name = _free_snapshot_name(SNAPSHOT_PREFIX + config.data.snapshot, settings)
    step(9, f"`medai snapshot create --name {name}` and `medai train {model_dir}`")
    info = create_snapshot(
        name, SnapshotQuery(modalities=("CR", "DX"), body_part="CHEST"), settings=settings,
        actor="medai-demo",
    )  # fmt: skip
    counts = info.counts
    splits = ", ".join(
        f"{split} {counts.get(split, {}).get('instances', 0)}" for split in ("train", "val", "test")
    )
    snapshot_line = f"{name}: {splits} images, hash {info.content_hash[:12]}"
    console.print(snapshot_line)
    overrides: dict[str, Any] = {"data": {"snapshot": name}}
    if epochs is not None:
        overrides["schedule"] = {"epochs": epochs}
    if image_size < max(config.transforms.image_size):
        overrides["transforms"] = {"image_size": [image_size, image_size]}
    config = apply_overrides(config, overrides)
    with _bar(console) as bar:
        task = bar.add_task(f"train {config.name}", total=config.schedule.epochs, status="")

        def on_epoch(result: Any) -> None:
            bar.update(
                task,
                completed=result.epoch,
                status=f"loss {result.train_loss:.3f} val AUROC {result.val_auroc:.3f}",
            )

        tracked = train_tracked(config, settings, on_epoch)
    model = DemoModel(settings, tracked, snapshot_line, model_dir)
    console.print(model.summary)
    return model


def promote_model(
    model: DemoModel, min_auroc_ci_low: float | None, step: Step, console: Console
) -> str:
    """``medai models promote NAME VERSION``: champion only through the AUROC gate."""
    from medai.errors import PromotionRefused
    from medai.training.tracking import promote

    tracked = model.tracked
    step(10, f"`medai models promote {tracked.model_name} {tracked.model_version}`")
    try:
        result = promote(
            tracked.model_name, tracked.model_version, model.settings,
            min_auroc_ci_low=min_auroc_ci_low,
        )  # fmt: skip
    except PromotionRefused as exc:
        raise RuntimeError(
            f"{exc}\nthe demo model did not pass its gate: train longer (--epochs) or on "
            "more studies (--studies)"
        ) from exc
    lows = ", ".join(f"{label} {low:.3f}" for label, low in result.ci_low.items())
    line = f"version {result.version} is champion (lower CI bounds {lows} >= {result.required})"
    console.print(line)
    return line


# -- serving --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoService:
    base_url: str
    steward_key: str
    summary: str


def _create_key(settings: Settings, role: str, name: str) -> str:
    from medai.catalog.db import create_engine_for
    from medai.serving.keys import create_key

    engine = create_engine_for(settings.resolved_database_url)
    try:
        return create_key(engine, name=name, role=role, actor="medai-demo").key
    finally:
        engine.dispose()


def serve_and_predict(
    settings: Settings,
    model: DemoModel,
    sites: DemoSites,
    servers: list[Server],
    port: int,
    step: Step,
    console: Console,
) -> DemoService:
    """``medai serve`` with the champion, and one study sent by a clinician."""
    import requests

    step(11, "`medai serve`; a clinician sends a study to POST /v1/predict")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    clinician = _create_key(settings, "clinician", f"demo-clinician-{stamp}")
    steward = _create_key(settings, "steward", f"demo-steward-{stamp}")
    env = {
        **server_env(settings),
        "MEDAI_SERVE_MODEL": model.tracked.model_name,
        "MEDAI_MODELS_DIR": str(model.model_dir.resolve().parent),
    }
    base = f"http://127.0.0.1:{port}"
    service = Server(
        "medai serve",
        medai_command("serve", "--host", "127.0.0.1", "--port", str(port)),
        env,
        settings.resolved_home / "logs" / "serve.log",
    ).start()
    servers.append(service)

    last = {"readyz": "no answer"}

    def ready() -> bool:
        if not wait_for_http(base + "/healthz")():
            return False
        answer = requests.get(base + "/readyz", timeout=5)
        last["readyz"] = answer.text[:500]
        return answer.status_code == 200

    try:
        service.wait_ready(ready, timeout=300)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nlast GET /readyz: {last['readyz']}") from None
    # A chest radiograph as the clinician's workstation holds it: identified, never stored.
    study = next(
        s for plan in sites.plans.values() for s in plan.today if s.modality in ("CR", "DX")
    )
    headers = {"Authorization": f"Bearer {clinician}", "Content-Type": "application/dicom"}
    answer = requests.post(
        base + "/v1/predict",
        params={"reference": "demo-worklist-0001"},
        data=study.files[0].read_bytes(),
        headers=headers,
        timeout=120,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"POST /v1/predict answered {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    table = Table(title=f"findings (model {body['model']['name']} v{body['model']['version']})")
    for column in ("finding", "probability", "threshold", "call", "truth (synthetic)"):
        table.add_column(column)
    for finding in body["findings"]:
        truth = getattr(study, str(finding["label"]), None)
        table.add_row(
            finding["label"],
            f"{finding['probability']:.3f}",
            f"{finding['threshold']:.3f}",
            "[red]positive" if finding["positive"] else "negative",
            "-" if truth is None else ("present" if truth else "absent"),
        )
    console.print(table)
    heatmap = requests.get(
        base + body["heatmap_url"], headers={"Authorization": f"Bearer {clinician}"}, timeout=60
    )
    heatmap_file = settings.resolved_home / "demo-heatmap.png"
    if heatmap.status_code == 200:
        heatmap_file.write_bytes(heatmap.content)
        console.print(f"Grad-CAM heatmap: {heatmap_file}")
    positives = [f["label"] for f in body["findings"] if f["positive"]] or ["no finding"]
    summary = (
        f"{', '.join(positives)} for reference {body['reference']} in "
        f"{body['timing_ms']['total']:.0f} ms; heatmap {heatmap.status_code}"
    )
    return DemoService(base, steward, summary)


def start_mlflow_ui(
    settings: Settings,
    servers: list[Server],
    port: int,
    service: DemoService,
    step: Step,
    console: Console,
) -> str:
    """The MLflow UI on the demo's tracking store, and the addresses to open."""
    import sys

    step(12, "where to look")
    uri = settings.resolved_mlflow_tracking_uri
    ui = Server(
        "mlflow ui",
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host",
         "127.0.0.1", "--port", str(port)],
        server_env(settings),
        settings.resolved_home / "logs" / "mlflow-ui.log",
    ).start()  # fmt: skip
    servers.append(ui)
    mlflow_url = f"http://127.0.0.1:{port}"
    ui.wait_ready(wait_for_http(mlflow_url), timeout=120)
    console.print(f"dashboard:  {service.base_url}/dashboard  (steward key: {service.steward_key})")
    console.print(f"API docs:   {service.base_url}/dashboard/docs (after signing in)")
    console.print(f"MLflow UI:  {mlflow_url}")
    return f"dashboard {service.base_url}/dashboard, MLflow UI {mlflow_url}"
