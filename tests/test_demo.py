"""`medai demo --exit` on a tiny setting: every stage of the story, checked in what it left behind.

The demo is run as a user runs it (the console command in a child process, its own C-STORE
listener, web service and MLflow UI); the catalog, the snapshot, MLflow and the files
it wrote are then read back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance, ProgressCount
from medai.collection.accounting import verify_collection
from medai.collection.receivers.stow import EDGE_SOURCE
from medai.config import Settings
from medai.demo.timeline import REPLAY_SOURCE
from medai.snapshots import list_snapshots
from tests.utils.dicom_net import free_port
from tests.utils.research import CAMPAIGN_KEY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_demo_runs_every_stage(settings: Settings) -> None:
    # A fixed campaign key (the demo keeps an existing one): the same pseudonyms, hence the
    # same patient split, every run, so the tiny validation and test splits hold both classes of
    # each label (an operating threshold for each, which the service needs).
    key = settings.resolved_key_file
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(CAMPAIGN_KEY + "\n", encoding="ascii")
    key.chmod(0o600)
    serve_port, mlflow_port = free_port(), free_port()
    run = subprocess.run(
        [sys.executable, "-m", "medai.cli", "demo", "--exit", "--studies", "120",
         "--image-size", "32", "--epochs", "20",
         "--serve-port", str(serve_port), "--mlflow-port", str(mlflow_port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "demo finished" in output

    # Collection: the replayed days, today's C-STORE pushes and the folder all arrived,
    # spread over more than one day, and everything offered is accounted for.
    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.events["quarantined"] == 4  # a text file and a truncated copy, imported twice
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        by_source = dict(
            session.execute(select(Instance.source, func.count()).group_by(Instance.source)).all()
        )
        days = session.scalar(select(func.count(func.distinct(ProgressCount.day))))
    engine.dispose()
    assert set(by_source) == {REPLAY_SOURCE, "c-store", "folder", EDGE_SOURCE}, by_source
    assert all(count > 0 for count in by_source.values())
    assert days is not None and days > 5
    pushed = r"site-a \(STMARY_PACS\): \d+ instances sent with (dcmtk storescu|pynetdicom)"
    assert re.search(pushed, output)

    # Labels and progress were shown.
    assert "rows linked" in output
    assert "Progress by site" in output

    # Research: a snapshot, a tracked run, a version promoted to champion.
    snapshots = list_snapshots(settings)
    assert [s.name for s in snapshots] == ["demo-chest-xray-triage"]
    uri = settings.resolved_mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a global one of another test
    champion = client.get_model_version_by_alias("chest-xray-triage", "champion")
    assert champion.run_id is not None
    run_info = client.get_run(champion.run_id)
    assert run_info.data.params["snapshot.name"] == "demo-chest-xray-triage"
    # The README's tiny demo passes its gate honestly: the "tiny" difficulty is an easier task
    # with a larger test share, gated at the configured bar, and nothing was overridden.
    assert "medai.gate_override_reason" not in champion.tags
    assert "GATE OVERRIDE" not in output
    passed = re.search(r"is champion \(lower CI bounds nodule ([\d.]+), effusion ([\d.]+), "
                       r"cardiomegaly ([\d.]+) >= ([\d.]+)\)", output)  # fmt: skip
    assert passed, output[-4000:]
    bounds, bar = [float(v) for v in passed.groups()[:3]], float(passed.group(4))
    assert bar == 0.75 and min(bounds) >= bar

    # Serving: the clinician's answer came from that version, with a heatmap.
    assert f"(model chest-xray-triage v{champion.version})" in output
    assert "for reference demo-worklist-0001" in output
    heatmap = settings.resolved_home / "demo-heatmap.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"http://127.0.0.1:{serve_port}/dashboard" in output
    assert f"MLflow UI:  http://127.0.0.1:{mlflow_port}" in output

    # The edge: site-c's PACS pushed into `medai edge` while the link was degraded (its
    # outbox grew on the dashboard from the heartbeats), the link went down and the centre
    # showed the site silent, the link came back and the outbox drained; reconcile at 0.
    _assert_edge_story(settings, output)
    # After the edge stage the centre runs with its default quiet time again, so the sites
    # that simply sent nothing for a few seconds do not read "silent" on the dashboard.
    now = re.search(r"│ sites now +│ (.*?) *│", output)
    assert now and "site-a" in now.group(1) and "site-c" in now.group(1), output[-3000:]
    assert "silent" not in now.group(1), now.group(1)

    # --exit stopped every server it started.
    assert _closed(serve_port) and _closed(mlflow_port)
    edge_log = settings.resolved_home / "logs" / "edge-site-c.log"
    assert "edge stopped" in edge_log.read_text(), edge_log.read_text()[-2000:]


def _centre_edge_uids(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return list(
                session.scalars(
                    select(Instance.sop_instance_uid).where(
                        Instance.source == EDGE_SOURCE, Instance.site_id == "site-c"
                    )
                )
            )
    finally:
        engine.dispose()


def _assert_edge_story(settings: Settings, output: str) -> None:
    story = re.search(
        r"link up: +site-c (?!silent).*?"
        r"outbox growing: site-c \w[\w ]*, last seen \d+ s ago; outbox (?P<grown1>\d+) .*?"
        r"outbox growing: site-c \w[\w ]*, last seen \d+ s ago; outbox (?P<grown2>\d+) .*?"
        r"link down.*?"
        r"silent: +site-c silent, last seen (?P<quiet>\d+) s ago; outbox (?P<held>\d+) .*?"
        r"link restored after \d+ s \((?P<cuts>\d+) connections cut.*?"
        r"caught up in \d+ s: site-c (?!silent)\w[\w ]*, last seen \d+ s ago; outbox 0 .*?"
        r"reconcile: site-c: 1 receipt day\(s\); edge (?P<edge>\d+) instance\(s\), "
        r"centre (?P<centre>\d+); outbox 0 unsent\s+reconcile: 0 differences",
        output,
        re.DOTALL,
    )
    assert story, output[-6000:]
    grown1, grown2, held = (int(story.group(n)) for n in ("grown1", "grown2", "held"))
    assert 0 < grown1 < grown2 == held  # growing while heartbeats passed, then frozen
    assert int(story.group("quiet")) >= 9  # the demo centre's quiet time
    assert int(story.group("cuts")) > 0  # uploads were tried and cut, not just held back
    sent = int(story.group("edge"))
    assert sent == int(story.group("centre")) == held
    summary = re.search(r"│ edge +│ site-c: (\d+) instances via", output)
    assert summary and int(summary.group(1)) == sent, output[-3000:]

    # Every instance the edge took in is at the centre exactly once, under its pseudonym.
    edge_home = settings.resolved_home / "demo-edge" / "home"
    engine = create_engine_for(f"sqlite:///{edge_home / 'catalog.db'}")  # the edge's own
    try:
        with session_factory(engine)() as session:
            at_edge = list(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()
    at_centre = _centre_edge_uids(settings)
    assert len(at_edge) == sent
    assert sorted(at_centre) == sorted(at_edge)
    assert all(uid.startswith("2.25.") for uid in at_centre)
