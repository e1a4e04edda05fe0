"""The edge stage of ``medai demo``: one site behind ``medai edge``, its link cut for a while.

What a hospital with an edge gateway does, with the real commands: ``medai campaign
site-kit SITE`` at the centre, ``medai edge init KIT`` in a separate edge home, ``medai edge
run`` receiving the site's PACS over C-STORE and forwarding to the demo's ``medai serve``
through :class:`medai.demo.link.Link`, a relay the demo degrades and cuts. The centre's
figures for the site are read where the dashboard reads them (``GET
/v1/campaign/progress``): heard from while heartbeats pass, its outbox growing while uploads
fail, **silent** once the link is down for the quiet time, then caught up when the link
comes back; ``medai collect reconcile --site SITE`` at the edge ends at 0 differences.

So that a cut of seconds shows, the demo's centre counts a site silent after
:data:`EDGE_QUIET_SECONDS` (``MEDAI_SITE_QUIET_HOURS``, 24 hours by default) and the edge
beats every second (``MEDAI_EDGE_HEARTBEAT_SECONDS``, a minute by default).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from medai.config import Settings
from medai.demo.link import Link
from medai.demo.services import (
    Server,
    echo_ready,
    free_port,
    medai_command,
    push_cstore,
    server_env,
)
from medai.demo.stages import DemoCampaign, Step, demo_difficulty
from medai.errors import DemoFailed

if TYPE_CHECKING:
    from medai.dicom.synth import SynthStudy

__all__ = ["EDGE_QUIET_SECONDS", "EDGE_STUDIES", "centre_env", "run_edge"]

EDGE_QUIET_SECONDS = 9.0  # MEDAI_SITE_QUIET_HOURS=0.0025
EDGE_STUDIES = 6  # pushed by the site's PACS in two waves while the link is degraded
EDGE_AE = "MEDAI"
_WAIT_SECONDS = 60.0


def centre_env() -> dict[str, str]:
    """What the demo's ``medai serve`` needs for the edge stage: a quiet time of seconds."""
    return {"MEDAI_SITE_QUIET_HOURS": repr(EDGE_QUIET_SECONDS / 3600)}


def edge_env(home: Path) -> dict[str, str]:
    """The edge's environment: its own home and catalog, none of the centre's settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEDAI_")}
    return env | {
        "MEDAI_HOME": str(home),
        "MEDAI_EDGE_HEARTBEAT_SECONDS": "1",
        "MEDAI_EDGE_BACKOFF_MAX_SECONDS": "1",
        "COLUMNS": "200",
    }


@dataclass
class _Centre:
    """The centre's figures of one site, as the dashboard reads them."""

    base_url: str
    steward_key: str
    site: str

    def figures(self) -> dict[str, Any]:
        import requests

        try:
            answer = requests.get(
                self.base_url + "/v1/campaign/progress",
                headers={"Authorization": f"Bearer {self.steward_key}"},
                timeout=30,
            )
        except requests.RequestException as exc:
            raise RuntimeError(f"the centre did not answer ({exc.__class__.__name__})") from exc
        if answer.status_code != 200:
            raise RuntimeError(
                f"GET /v1/campaign/progress answered {answer.status_code}: {answer.text[:300]}"
            )
        for site in answer.json()["sites"]:
            if site["site"] == self.site:
                return dict(site)
        raise RuntimeError(f"the centre's progress has no site {self.site}")

    def wait(self, what: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + _WAIT_SECONDS
        while True:
            figures = self.figures()
            if done(figures):
                return figures
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what} not seen in {_WAIT_SECONDS:.0f} s: {describe(figures)}")
            time.sleep(0.5)


def _depth(figures: dict[str, Any]) -> int:
    edge = figures.get("edge") or {}
    return int(edge.get("outbox_depth", 0))


def _ago(stamp: str | None) -> str:
    if not stamp:
        return "never"
    seconds = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()
    return f"{max(0.0, seconds):.0f} s ago"


def describe(figures: dict[str, Any]) -> str:
    """One line of the dashboard's figures for a site: status, last seen, outbox, instances.

    The outbox is the one the edge's latest heartbeat reported: while the link is down, the
    centre's figure is the last one it heard.
    """
    edge = figures.get("edge") or {}
    outbox = (
        f"outbox {edge.get('outbox_depth')} (heartbeat {_ago(edge.get('last_heartbeat'))})"
        if edge
        else "no edge heartbeat"
    )
    return (
        f"{figures['site']} {figures['status']}, last seen {_ago(figures.get('last_seen'))}; "
        f"{outbox}; {figures['instances']} instances at the centre"
    )


def _medai(
    env: dict[str, str], *args: str, allowed: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    """``medai ARGS`` in a child process; raise unless it exits with one of ``allowed``."""
    run = subprocess.run(medai_command(*args), env=env, capture_output=True, text=True, timeout=120)
    if run.returncode not in allowed:
        raise RuntimeError(
            f"`medai {' '.join(args[:3])}` failed ({run.returncode}): "
            f"{(run.stdout + run.stderr).strip()[-800:]}"
        )
    return run


def _edge_studies(
    root: Path, site: str, seed: int, image_size: int
) -> tuple[list[SynthStudy], list[SynthStudy]]:
    """The studies the site's PACS sends today, new to the campaign, in two waves."""
    from medai.dicom.synth import generate

    synth = generate(
        root / "pacs",
        studies=EDGE_STUDIES,
        seed=seed,
        sites=[site],
        image_size=image_size,
        ct_slices=2,
        difficulty=demo_difficulty(image_size),
    )
    records = list(synth.study_records)
    half = len(records) // 2
    return records[:half], records[half:]


def run_edge(
    settings: Settings,
    campaign: DemoCampaign,
    servers: list[Server],
    *,
    centre_url: str,
    steward_key: str,
    seed: int,
    image_size: int,
    step: Step,
    console: Console,
) -> str:
    """The site kit, the edge, a degraded then cut link, catching up, and reconcile at 0.

    The site is the campaign's last one with an AE title (site-c of the demo campaign, the
    one that hands folders over and went quiet half-way).
    """
    with_ae = [site for site in campaign.definition.sites if site.ae_titles]
    if not with_ae:
        return "skipped: no site of the campaign has an AE title to push from"
    site = with_ae[-1]
    step(12, f"{site.id} behind `medai edge`; its link to the centre degraded, cut, then restored")
    started = time.monotonic()
    root = settings.resolved_home / "demo-edge"
    if root.exists():
        shutil.rmtree(root)  # the demo's own edge of an earlier run
    root.mkdir(parents=True)
    home = root / "home"
    # New studies every day the demo runs, so an earlier run's receipts never differ.
    waves = _edge_studies(root, site.id, seed + 1 + campaign.today.toordinal(), image_size)
    passphrase = root / "kit-passphrase"
    passphrase.write_text(secrets.token_urlsafe(24) + "\n", encoding="ascii")
    passphrase.chmod(0o600)
    kit = root / f"{site.id}.kit"
    port = int(centre_url.rsplit(":", 1)[1])
    link = Link(port).start()
    console.print(
        f"the demo's centre counts any site silent once nothing was heard from it for "
        f"{EDGE_QUIET_SECONDS:.0f} s (MEDAI_SITE_QUIET_HOURS="
        f"{centre_env()['MEDAI_SITE_QUIET_HOURS']}; default 24 h), so a cut shows in seconds; "
        "the edge beats every second (MEDAI_EDGE_HEARTBEAT_SECONDS=1; default a minute)"
    )
    _medai(
        server_env(settings), "campaign", "site-kit", site.id, "--out", str(kit),
        "--centre-url", link.url, "--passphrase-file", str(passphrase),
    )  # fmt: skip
    env = edge_env(home)
    _medai(env, "edge", "init", str(kit), "--passphrase-file", str(passphrase))
    console.print(
        f"`medai campaign site-kit {site.id}` -> {kit}; `medai edge init` in {home}; "
        f"the edge reaches the centre through a relay on {link.url}"
    )
    edge_port = free_port()
    edge = Server(
        "medai edge run",
        medai_command("edge", "run", "--host", "127.0.0.1", "--port", str(edge_port),
                      "--ae-title", EDGE_AE, "--drain-seconds", "2"),
        env,
        settings.resolved_home / "logs" / f"edge-{site.id}.log",
    ).start()  # fmt: skip
    servers.append(edge)
    calling = site.ae_titles[0]
    edge.wait_ready(echo_ready(edge_port, calling, EDGE_AE))
    centre = _Centre(centre_url, steward_key, site.id)
    before = centre.wait("the edge's first heartbeat", lambda f: f.get("edge") is not None)
    console.print(Text(f"link up:       {describe(before)}"))

    link.set_state("uploads-cut")
    console.print(Text("link degraded: uploads are cut mid-way, heartbeats still get through",
                       style="yellow"))  # fmt: skip
    sent = 0
    for wave in waves:
        files = [path for study in wave for path in study.files]
        _tool, count = push_cstore(files, port=edge_port, calling=calling, called=EDGE_AE)
        sent += count
        growing = centre.wait(
            f"an outbox of {sent}",
            lambda f, sent=sent: _depth(f) >= sent,  # type: ignore[misc]
        )
        console.print(
            Text(f"PACS sent {count} instances to the edge ({calling}); outbox growing: "
                 f"{describe(growing)}")
        )  # fmt: skip

    link.set_state("down")
    cut_at = time.monotonic()
    console.print(Text("link down:     nothing passes", style="bold red"))
    silent = centre.wait("the site silent", lambda f: f["status"] == "silent")
    console.print(Text(f"silent:        {describe(silent)}", style="red"))

    link.set_state("up")
    cut_for = time.monotonic() - cut_at
    restored = time.monotonic()
    console.print(
        Text(f"link restored after {cut_for:.0f} s ({link.resets} connections cut while it was "
             "degraded or down)", style="green")
    )  # fmt: skip
    caught = centre.wait(
        "the outbox drained",
        lambda f: (
            f["status"] != "silent"
            and _depth(f) == 0
            and int(f["instances"]) >= int(before["instances"]) + sent
        ),
    )
    console.print(
        Text(f"caught up in {time.monotonic() - restored:.0f} s: {describe(caught)}",
             style="green")
    )  # fmt: skip
    arrived = int(caught["instances"]) - int(before["instances"])
    if arrived != sent:
        raise DemoFailed(f"{sent} instances sent through the edge, {arrived} at the centre")

    reconcile = _medai(env, "collect", "reconcile", "--site", site.id, allowed=(0, 1))
    for line in reconcile.stdout.strip().splitlines():
        console.print(Text(f"reconcile: {line}"))
    if reconcile.returncode != 0:
        raise DemoFailed(f"`medai collect reconcile --site {site.id}` found differences")
    console.print(f"the edge keeps running (log {edge.log}); its link stays up")
    return (
        f"{site.id}: {sent} instances via `medai edge`, each once at the centre; link cut "
        f"{cut_for:.0f} s: silent with outbox {_depth(silent)}, caught up, reconcile 0 "
        f"differences ({time.monotonic() - started:.0f} s)"
    )
