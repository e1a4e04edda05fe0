"""`medai edge run` between dcmtk and a real `medai serve` centre, over links that fail.

The PACS (storescu) pushes identified CT slices into the edge, which de-identifies them on
site and forwards them by STOW-RS. Whatever the link or the edge process does (a proxy that
cuts uploads, kill -9 mid-forward), every instance the PACS sent ends at the centre exactly
once, `medai collect reconcile` reports zero differences, and both sides' `collect verify`
and `audit verify` pass.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from medai.audit import actors
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance
from medai.config import Settings, get_settings
from medai.edge.kit import init_edge, open_kit, write_kit
from tests.edge.helpers import ct_files
from tests.serving.helpers import ServeProcess
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import SITE_A_AE, echo, free_port
from tests.utils.tcp_proxy import CuttingProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("storescu") is None and not os.environ.get("CI"),
        reason="dcmtk is not installed (apt-get install dcmtk)",
    ),
]

PASSPHRASE = "correct horse battery staple"


@dataclass
class Sites:
    centre: Settings
    edge: Settings
    kit: Path
    tmp: Path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return os.environ.copy() | {"MEDAI_HOME": str(settings.resolved_home), "COLUMNS": "250"} | extra


def make_centre(tmp: Path) -> tuple[Settings, ServeProcess]:
    """The centre's home with the example campaign, and `medai serve` on it."""
    centre = Settings(home=tmp / "centre")
    init_example_campaign(centre)
    return centre, ServeProcess(env_of(centre, MEDAI_SERVE_MODEL=""))


def make_edge(tmp: Path, centre: Settings, centre_url: str) -> Sites:
    """A site kit for site-a from the centre, and an edge home set up from it."""
    engine = create_engine_for(centre.resolved_database_url)
    kit = tmp / "site-a.kit"
    try:
        write_kit(centre, engine, "site-a", kit, PASSPHRASE, centre_url=centre_url,
                  certificate=None, actor=actors.operator())  # fmt: skip
    finally:
        engine.dispose()
    edge = Settings(home=tmp / "edge")
    init_edge(edge, open_kit(kit.read_bytes(), PASSPHRASE), actor=actors.operator())
    return Sites(centre, edge, kit, tmp)


class EdgeProcess:
    """``medai edge run`` in a child process, ready once its listener answers C-ECHO."""

    def __init__(
        self, edge: Settings, *options: str, port: int | None = None, **settings: str
    ) -> None:
        self.port = port or free_port()
        env = env_of(
            edge,
            MEDAI_EDGE_HEARTBEAT_SECONDS="1",
            MEDAI_EDGE_BACKOFF_MAX_SECONDS="1",
            MEDAI_EDGE_BATCH_INSTANCES="4",
            **settings,
        )
        self.log = open(edge.resolved_home / f"edge-run-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medai.cli", "edge", "run", "--host", "127.0.0.1",
             "--port", str(self.port), "--drain-seconds", "5", *options],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while echo(self.port).returncode != 0:
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, "the edge did not answer C-ECHO"
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.log.closed:
            return ""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout=60)
        text = self.output()
        self.log.close()
        return text


def storescu(port: int, files: list[Path]) -> None:
    run = subprocess.run(
        ["storescu", "-aet", SITE_A_AE, "-aec", "MEDAI", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def uids(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()


def outbox_counts(edge: Settings) -> tuple[int, int]:
    """(enqueued, acknowledged) read straight from the outbox file, as another process."""
    path = edge.resolved_home / "edge" / "outbox.sqlite"
    if not path.exists():
        return 0, 0
    with sqlite3.connect(path, timeout=10) as db:
        total, acked = db.execute(
            "SELECT count(*), coalesce(sum(acked_at IS NOT NULL), 0) FROM outbox"
        ).fetchone()
    return int(total), int(acked)


def wait_forwarded(edge: Settings, count: int, process: EdgeProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while outbox_counts(edge) != (count, count):
        assert time.monotonic() < deadline, (
            f"outbox {outbox_counts(edge)}, want {count} acked:\n{process.output()}"
        )
        time.sleep(0.2)


def medai(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medai.cli", *args],
        env=env_of(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def assert_all_arrived_once(sites: Sites, sent: int) -> None:
    at_edge, at_centre = uids(sites.edge), uids(sites.centre)
    assert len(at_edge) == sent
    assert sorted(at_centre) == sorted(at_edge)  # each once: none lost, none copied
    run = medai(sites.edge, "collect", "reconcile", "--site", "site-a", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert (report["differences"], report["edge_instances"], report["centre_instances"]) == (
        0, sent, sent,
    )  # fmt: skip
    for home in (sites.edge, sites.centre):
        for command in (("collect", "verify"), ("audit", "verify")):
            run = medai(home, *command)
            assert run.returncode == 0, f"{command} at {home.home}: {run.stdout}{run.stderr}"


@pytest.fixture
def tmp(tmp_path: Path, clean_env: None) -> Path:
    return tmp_path


def test_pushed_instances_reach_the_centre_once_and_reconcile(tmp: Path) -> None:
    home, centre = make_centre(tmp)
    sites = make_edge(tmp, home, centre.url)
    files = ct_files(tmp / "pacs", 10, tag="e2e")
    handed_over = ct_files(tmp / "handover", 3, tag="folder")  # left in the watched folder
    sent = len(files) + len(handed_over)
    edge = EdgeProcess(sites.edge, "--watch", str(tmp / "handover"))
    try:
        storescu(edge.port, files)
        wait_forwarded(sites.edge, sent, edge)
        assert list((tmp / "handover").iterdir()) == []  # taken into custody, then removed
        # The heartbeat's answer is kept for `medai edge status`.
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(medai(sites.edge, "edge", "status", "--json").stdout.strip())
            answer = (status.get("heartbeat") or {}).get("answer") or {}
            if sum(r["count"] for r in (answer.get("receipts") or {}).values()) == sent:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status["outbox_depth"] == 0 and status["acknowledged"] == sent
        assert answer["site"] == "site-a" and answer["server_time"]
        # Nothing identified crossed: the centre holds the edge's pseudonymized UIDs only.
        assert all(uid.startswith("2.25.") for uid in uids(sites.centre))
        output = edge.stop()
        assert "edge stopped" in output, output
        # Re-sending what the centre already holds (as after a lost acknowledgement) is
        # harmless: the centre answers duplicates and keeps one copy.
        with sqlite3.connect(sites.edge.resolved_home / "edge" / "outbox.sqlite") as db:
            db.execute("UPDATE outbox SET acked_at = NULL, outcome = NULL WHERE instance_id <= 5")
        edge = EdgeProcess(sites.edge, port=edge.port)
        wait_forwarded(sites.edge, sent, edge)
        edge.stop()
        assert_all_arrived_once(sites, sent)
    finally:
        edge.stop()
        centre.stop()


def test_uploads_cut_by_the_link_are_sent_again_and_arrive_once(tmp: Path) -> None:
    home, centre = make_centre(tmp)
    with CuttingProxy(centre.port, cut_after=20_000, cuts=4) as proxy:
        sites = make_edge(tmp, home, f"http://127.0.0.1:{proxy.port}")
        files = ct_files(tmp / "pacs", 12, tag="cut")
        edge = EdgeProcess(sites.edge)
        try:
            storescu(edge.port, files)
            wait_forwarded(sites.edge, len(files), edge)
            edge.stop()
            assert proxy.cut_connections == 4
            assert_all_arrived_once(sites, len(files))
        finally:
            edge.stop()
            centre.stop()


def test_an_edge_killed_mid_forward_resumes_without_loss_or_copy(tmp: Path) -> None:
    home, centre = make_centre(tmp)
    sites = make_edge(tmp, home, centre.url)
    files = ct_files(tmp / "pacs", 24, tag="kill")
    # A slow link: the forward is still running when the edge is killed.
    edge = EdgeProcess(sites.edge, MEDAI_EDGE_BANDWIDTH_BYTES_PER_S="60000")
    try:
        storescu(edge.port, files)
        deadline = time.monotonic() + 60
        while outbox_counts(sites.edge)[1] == 0:
            assert time.monotonic() < deadline, edge.output()
            time.sleep(0.05)
        edge.stop(signal.SIGKILL)
        total, acked = outbox_counts(sites.edge)
        # Killed mid-forward; what was not enqueued yet is filled from the catalog later.
        assert 0 < acked < len(files) and total <= len(files)
        # Meanwhile reconciliation names what the centre lacks, and fails.
        run = medai(sites.edge, "collect", "reconcile", "--site", "site-a", "--json")
        assert run.returncode == 1, run.stdout + run.stderr
        report = json.loads(run.stdout.strip().splitlines()[-1])
        # (The centre may hold a batch more than the edge saw acknowledged: the kill can fall
        # between the centre's commit and the edge's acknowledgement; that batch is re-sent.)
        at_centre = uids(sites.centre)
        assert acked <= len(at_centre) < len(files)
        assert report["differences"] == len(files) - len(at_centre)
        (day,) = report["days_differing"]
        assert sorted(day["missing_at_centre"]) == sorted(set(uids(sites.edge)) - set(at_centre))
        assert set(day["edge_state"].values()) == {"unsent"} and day["missing_at_edge"] == []
        edge = EdgeProcess(sites.edge, port=edge.port)  # the PACS re-sends nothing
        wait_forwarded(sites.edge, len(files), edge)
        edge.stop()
        assert_all_arrived_once(sites, len(files))
    finally:
        edge.stop()
        centre.stop()


def test_a_centre_killed_mid_batch_and_restarted_gets_everything_once(tmp: Path) -> None:
    home, centre = make_centre(tmp)
    # The edge knows the centre by one address (a pass-through proxy) across the restart.
    with CuttingProxy(centre.port, cut_after=1, cuts=0) as address:
        sites = make_edge(tmp, home, f"http://127.0.0.1:{address.port}")
        files = ct_files(tmp / "pacs", 16, tag="restart")
        edge = EdgeProcess(sites.edge, MEDAI_EDGE_BANDWIDTH_BYTES_PER_S="60000")
        try:
            storescu(edge.port, files)
            deadline = time.monotonic() + 60
            while outbox_counts(sites.edge)[1] == 0:
                assert time.monotonic() < deadline, edge.output()
                time.sleep(0.05)
            centre.process.kill()  # mid-batch: the link is slow, a batch is on its way
            centre.process.wait(timeout=30)
            time.sleep(2)  # down for a while: the edge backs off and keeps its outbox
            assert outbox_counts(sites.edge)[1] < len(files)
            centre = ServeProcess(env_of(home, MEDAI_SERVE_MODEL=""))
            address.target = ("127.0.0.1", centre.port)
            wait_forwarded(sites.edge, len(files), edge)
            edge.stop()
            assert_all_arrived_once(sites, len(files))
        finally:
            edge.stop()
            centre.stop()
