"""The collection stages of ``medai demo``, one function each, returning its summary line.

Every stage calls the same functions as the command a user would run (``campaign init``,
``collect listen``, ``collect import``, ``labels import``, ``campaign status``, ``collect
verify``, ``audit verify``), so the demo proves them together; the research and serving
stages are in :mod:`medai.demo.model_stages`.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from medai.audit import actors
from medai.config import Settings
from medai.demo.services import (
    Server,
    echo_ready,
    free_port,
    medai_command,
    push_cstore,
    server_env,
)
from medai.demo.timeline import SitePlan, plans_by_site, replay, start_for_day
from medai.errors import DemoFailed

if TYPE_CHECKING:
    from medai.collection.campaign.definition import CampaignDefinition
    from medai.dicom.synth import SynthResult

Step = Callable[[int, str], None]

# How the demo's sites keep pace (see medai.demo.timeline): the third went quiet mid-way.
PACES = {"site-c": "stalled"}
LISTENER_AE = "MEDAI"
SNAPSHOT_PREFIX = "demo-"
# Every change the demo makes is audited as its own, not as the person running it.
DEMO_ACTOR = actors.system("demo")


def progress_bar(console: Console) -> Progress:
    """The demo's bar: a description, the bar, done/total, a status, the time taken."""
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
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
    init_campaign(definition, settings, actor=DEMO_ACTOR)
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


def demo_difficulty(image_size: int) -> str:
    """The synthetic campaign's difficulty for ``image_size``.

    Below 64 pixels (the README's tiny demo runs at 32) a 6 mm nodule or a blunted
    costophrenic angle is less than a pixel: the task would be unlearnable rather than
    hard. Those runs use the ``tiny`` difficulty, a different, easier task (see
    :mod:`medai.dicom.synth.difficulty`), and are gated on it at the same bar.
    """
    return "tiny" if image_size < 64 else "hard"


def demo_fractions(image_size: int) -> tuple[float, float, float]:
    """The snapshot's train/val/test fractions for ``image_size``.

    The gate asks the lower 95 % bound of each finding's test AUROC to reach its bar; even a
    perfect model needs about six positive and twelve negative test patients for that. A
    tiny demo has few studies, so its test split takes a larger share (35 %) of an easy task
    instead of the bar being lowered; full-size runs keep the default 70/15/15.
    """
    from medai.snapshots.splits import DEFAULT_FRACTIONS

    return (0.5, 0.15, 0.35) if demo_difficulty(image_size) == "tiny" else DEFAULT_FRACTIONS


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
    with progress_bar(console) as bar:
        task = bar.add_task("generate", total=studies * len(sites), status="")
        synth = generate(
            incoming,
            studies=studies * len(sites),
            seed=seed,
            sites=sites,
            image_size=image_size,
            ct_slices=4,
            progress=lambda done, total: bar.update(task, completed=done),
            difficulty=demo_difficulty(image_size),
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
    pipeline.actor = DEMO_ACTOR
    total = sum(len(s.files) for plan in plans for day in plan.past.values() for s in day)
    try:
        with progress_bar(console) as bar:
            task = bar.add_task("replay", total=total, status="")
            counts = replay(
                pipeline,
                plans,
                campaign.definition.start_date,
                progress=lambda n: bar.advance(task, n),
            )
    finally:
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
        tool, sent = push_cstore(files, port=port, calling=site.ae_titles[0], called=LISTENER_AE)
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
    from medai.cli_support import catalog_session
    from medai.collection.labels import import_label_sheet, rematch_labels

    step(6, "label sheets: each site's RIS export linked to its studies")
    table = Table()
    for column in ("site", "rows", "matched", "unmatched (kept)", "conflict"):
        table.add_column(column, justify="left" if column == "site" else "right")
    matched = rows = 0
    for site, sheet in sorted(sites.synth.label_sheets.items()):
        result = import_label_sheet(sheet, site, settings=settings, actor=DEMO_ACTOR, force=True)
        counts = result.counts
        matched += counts.matched
        rows += result.rows
        table.add_row(site, str(result.rows), str(counts.matched), str(counts.unmatched),
                      str(counts.conflict))  # fmt: skip
    console.print(table)
    with catalog_session(settings, write=True) as session:
        late = rematch_labels(session, actor=DEMO_ACTOR)
    if late.rows:
        console.print(f"{late.rows} kept rows matched on re-match")
    return f"{matched + late.rows} of {rows} rows linked"


def show_progress(settings: Settings, step: Step, console: Console) -> str:
    """``medai campaign status``: per-site KPIs, late sites first."""
    from medai.cli_support import catalog_session
    from medai.collection.campaign.cli import print_status_report
    from medai.collection.campaign.progress import compute_progress

    step(7, "`medai campaign status`")
    with catalog_session(settings) as session:
        report = compute_progress(session)
    print_status_report(report, console)
    sites = ", ".join(f"{site.site} {site.status}" for site in report.sites)
    return f"{report.status} overall; {sites}"


def verify(settings: Settings, step: Step, console: Console) -> str:
    """``medai collect verify`` and ``medai audit verify``."""
    from medai.audit import verify_audit_chain
    from medai.cli_support import catalog_session
    from medai.collection.accounting import verify_collection

    step(8, "`medai collect verify` and `medai audit verify`")
    report = verify_collection(settings)
    with catalog_session(settings) as session:
        audit = verify_audit_chain(session)
    line = (
        f"inputs {report.inputs} = stored {report.events.get('stored', 0)} + duplicate "
        f"{report.events.get('duplicate', 0)} + quarantined {report.events.get('quarantined', 0)}"
        f"; audit chain of {audit.records} records {'intact' if audit.ok else 'BROKEN'}"
    )
    console.print(Text(line))
    # Each check names its own problems: a broken chain alone is not an accounting problem.
    problems = [f"accounting: {problem}" for problem in report.problems]
    if not audit.ok:
        problems.append(f"audit chain broken at record {audit.first_bad_seq}: {audit.problem}")
    if problems:
        raise DemoFailed("; ".join(problems))
    return line
