"""The research and serving stages of ``medai demo``: snapshot, training, promotion, service.

Like :mod:`medai.demo.stages` (the collection stages), each calls what the user's command
calls (``snapshot create``, ``train``, ``models promote``, ``serve``) and returns the line
its summary shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from medai.config import Settings
from medai.demo.services import Server, medai_command, server_env, wait_for_http
from medai.demo.stages import (
    DEMO_ACTOR,
    SNAPSHOT_PREFIX,
    DemoSites,
    Step,
    demo_fractions,
    progress_bar,
)

if TYPE_CHECKING:
    from medai.training.tracking import TrackedRun

__all__ = ["DemoModel", "DemoService", "promote_model", "serve_and_predict", "start_mlflow_ui",
           "train_model"]  # fmt: skip


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
    from medai.snapshots import list_snapshots

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
    from medai.snapshots import SnapshotQuery, create_snapshot
    from medai.training.config import apply_overrides, load_model_config
    from medai.training.tracking import train_tracked

    config = load_model_config(model_dir)
    name = _free_snapshot_name(SNAPSHOT_PREFIX + config.data.snapshot, settings)
    step(9, f"`medai snapshot create --name {name}` and `medai train {model_dir}`")
    info = create_snapshot(
        name, SnapshotQuery(modalities=("CR", "DX"), body_part="CHEST"), settings=settings,
        actor=DEMO_ACTOR, fractions=demo_fractions(image_size),
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
    with progress_bar(console) as bar:
        task = bar.add_task(f"train {config.name}", total=config.schedule.epochs, status="")

        def on_epoch(result: Any) -> None:
            bar.update(
                task,
                completed=result.epoch,
                status=f"loss {result.train_loss:.3f} val AUROC {result.val_auroc:.3f}",
            )

        tracked = train_tracked(config, settings, on_epoch, actor=DEMO_ACTOR)
    model = DemoModel(settings, tracked, snapshot_line, model_dir)
    console.print(model.summary)
    return model


def promote_model(
    model: DemoModel, override_gate_reason: str | None, step: Step, console: Console
) -> str:
    """``medai models promote NAME VERSION``: champion only through the gate, or through an
    override with a reason (audited and tagged on the version)."""
    from medai.errors import PromotionRefused
    from medai.training.tracking import promote

    tracked = model.tracked
    step(10, f"`medai models promote {tracked.model_name} {tracked.model_version}`")
    try:
        result = promote(
            tracked.model_name, tracked.model_version, model.settings,
            override_gate=override_gate_reason is not None, reason=override_gate_reason,
            actor=DEMO_ACTOR,
        )  # fmt: skip
    except PromotionRefused as exc:
        raise RuntimeError(
            f"{exc}\nthe demo model did not pass its gate: train longer (--epochs) or on "
            "more studies (--studies), or promote it anyway on the record with "
            "--override-gate-reason TEXT"
        ) from exc
    lows = ", ".join(f"{label} {low:.3f}" for label, low in result.ci_low.items())
    if result.overridden:
        line = (
            f"version {result.version} is champion by a GATE OVERRIDE (lower CI bounds {lows}; "
            f"gate {result.required}), audited and tagged on the version"
        )
    else:
        line = f"version {result.version} is champion (lower CI bounds {lows} >= {result.required})"
    console.print(line)
    return line


# -- serving --------------------------------------------------------------------------


@dataclass
class DemoService:
    base_url: str
    steward_key: str
    summary: str
    server: Server


def _create_key(settings: Settings, role: str, name: str) -> str:
    from medai.catalog.db import create_engine_for
    from medai.serving.keys import create_key

    engine = create_engine_for(settings.resolved_database_url)
    try:
        return create_key(engine, name=name, role=role, actor=DEMO_ACTOR).key
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
    extra_env: dict[str, str] | None = None,
) -> DemoService:
    """``medai serve`` with the champion (``extra_env`` added to its environment), and one
    study sent by a clinician."""
    import requests

    step(11, "`medai serve`; a clinician sends a study to POST /v1/predict")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    clinician = _create_key(settings, "clinician", f"demo-clinician-{stamp}")
    steward = _create_key(settings, "steward", f"demo-steward-{stamp}")
    env = {
        **server_env(settings),
        "MEDAI_SERVE_MODEL": model.tracked.model_name,
        "MEDAI_MODELS_DIR": str(model.model_dir.resolve().parent),
        **(extra_env or {}),
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
            Text("positive", style="red") if finding["positive"] else "negative",
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
    return DemoService(base, steward, summary, service)


def restart_service(
    service: DemoService, servers: list[Server], without: Iterable[str], console: Console
) -> str:
    """``medai serve`` again on the same port, without the settings named in ``without``.

    The edge stage runs the centre with a quiet time of seconds so that a cut shows; left
    so, every site that sends nothing for those seconds reads "silent" on the dashboard
    after the demo. The centre is restarted with its defaults, and the sites' statuses as
    the dashboard shows them are returned (one line).
    """
    import requests

    old = service.server
    old.stop()
    servers.remove(old)
    dropped = set(without)
    env = {name: value for name, value in old.env.items() if name not in dropped}
    fresh = Server(old.name, old.command, env, old.log).start()
    servers.append(fresh)
    fresh.wait_ready(wait_for_http(service.base_url + "/readyz"), timeout=300)
    service.server = fresh
    answer = requests.get(
        service.base_url + "/v1/campaign/progress",
        headers={"Authorization": f"Bearer {service.steward_key}"},
        timeout=30,
    )
    answer.raise_for_status()
    statuses = ", ".join(f"{s['site']} {s['status']}" for s in answer.json()["sites"])
    line = f"`medai serve` restarted with the default quiet time; sites: {statuses}"
    console.print(line)
    return statuses


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

    step(13, "where to look")
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
