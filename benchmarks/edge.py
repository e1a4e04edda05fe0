"""Forwarding over a link that drops: `medai edge` -> `medai serve` beside Orthanc -> Orthanc.

dcmtk's storescu pushes the same N small synthetic chest radiographs (CR and DX, 128 to 256
px, identified as a PACS sends them) into:
  * medai   — `medai edge run` (set up from `medai campaign site-kit`), which de-identifies on
    site and forwards by STOW-RS, batched and retried, to a `medai serve` centre;
  * Orthanc — Debian's /usr/sbin/Orthanc "A", which a router loop here forwards to Orthanc
    "B" with Orthanc's own store jobs (every 0.5 s, the instances that arrived since the last
    poll of /changes go in one `POST /modalities/dest/store` (or /peers/dest/store)
    {"Asynchronous": true}; a job that fails is resubmitted (`POST /jobs/{id}/resubmit`)
    after 1 s, until it succeeds).
Both links to the destination pass through the same cutting proxy: every --cut-every seconds
every open connection is reset (RST) and for --down seconds new ones are reset as soon as
they open; then the link is up again. The schedule starts with the first push.

For each it prints end-to-end instances/s (first push to the last arrival at the destination,
both polled every 0.2 s), instances lost (sent by storescu but not at the destination after a
bounded wait: --wait seconds after the push ended), and duplicates at the destination (rows
minus unique SOP Instance UIDs: the centre's catalog; Orthanc B's /instances). Target: zero
lost, zero duplicates, medai at least Orthanc's rate. Also shown: storescu's own time (the
first hop), the link's cuts and the connections they reset, and "re-sent", the instance
sends beyond each one's first (medai: the outbox's attempts; Orthanc: the instances of its
resubmitted jobs). medai also de-identifies every instance on the way (Orthanc forwards them
as received), and `medai collect reconcile` at the end must report zero differences.
--json OUT writes the figures (one object per system under "results").

    python benchmarks/edge.py [--instances 300] [--cut-every 3] [--down 1] [--wait 180]
                              [--orthanc-via modalities|peers] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving.helpers import ServeProcess  # noqa: E402
from tests.utils.dicom_net import SITE_A_AE, echo, free_port  # noqa: E402
from tests.utils.orthanc import Orthanc  # noqa: E402

PASSPHRASE = "benchmark passphrase, not a secret"
POLL = 0.2


# -- the files ------------------------------------------------------------------------------


def make_files(folder: Path, count: int) -> list[Path]:
    """``count`` identified chest radiographs, CR and DX alternately, 128 to 256 px square."""
    from medai.dicom.synth import make_cr, make_dx

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        make = make_cr if index % 2 == 0 else make_dx
        ds = make(seed=index, size=128 + 32 * (index % 5))
        path = folder / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- a link that drops every few seconds ----------------------------------------------------


class FlappingLink:
    """A loopback TCP proxy whose link goes down for ``down`` s every ``every`` s.

    At each cut every open connection is reset (SO_LINGER 0: RST, as a dropped link) and,
    while the link is down, new connections are reset as soon as they are accepted.
    """

    def __init__(self, target_port: int, *, every: float, down: float) -> None:
        self.target = ("127.0.0.1", target_port)
        self.every, self.down = every, down
        self.cuts = 0  # times the link went down
        self.reset_connections = 0  # connections reset (open at a cut, or opened while down)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._is_down = False
        self._closed = threading.Event()
        self._flapping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()
        threading.Thread(target=self._schedule, daemon=True).start()

    def start_flapping(self) -> None:
        """Start the cut schedule (the first cut comes ``every`` s from now)."""
        self._flapping.set()

    def stop_flapping(self) -> None:
        """Leave the link up from now on."""
        self._flapping.clear()
        with self._lock:
            self._is_down = False

    def close(self) -> None:
        self._closed.set()
        self._flapping.set()
        self._listener.close()
        self._cut_all()

    def _schedule(self) -> None:
        while not self._closed.is_set():
            self._flapping.wait()
            if self._closed.wait(self.every - self.down) or not self._flapping.is_set():
                continue
            with self._lock:
                self._is_down = True
                self.cuts += 1
            self._cut_all()
            self._closed.wait(self.down)
            with self._lock:
                self._is_down = False

    def _cut_all(self) -> None:
        with self._lock:
            victims, self._open = self._open, set()
            self.reset_connections += len(victims) // 2
        for sock in victims:
            _reset(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._is_down
                if down:
                    self.reset_connections += 1
            if down:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)  # a clean half-close passes through
        except OSError:
            pass


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a pump blocked in recv() on it
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Result:
    """One system's run: N pushed, forwarded over the flapping link."""

    system: str
    sent: int
    push_seconds: float  # storescu's wall time (receive at the first hop)
    seconds: float  # first push to last arrival at the destination
    arrived: int  # unique SOP Instance UIDs at the destination
    rows: int  # instances the destination lists
    link_cuts: int
    connections_reset: int
    resent: int  # instance sends beyond each one's first (retries after cuts)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.sent - self.arrived

    @property
    def duplicates(self) -> int:
        return self.rows - self.arrived

    @property
    def rate(self) -> float:
        return self.arrived / self.seconds if self.seconds > 0 else 0.0


def push(port: int, called: str, folder: Path, count: int) -> None:
    """storescu every file of ``folder`` in one association; fails unless all are stored."""
    run = subprocess.run(
        ["storescu", "-aet", SITE_A_AE, "-aec", called, "+sd", "127.0.0.1", str(port),
         str(folder)],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"storescu to {called} failed:\n{run.stdout}{run.stderr}"[-3000:])


def follow(
    count: Callable[[], int], target: int, push_done: threading.Event, wait: float
) -> tuple[float, int]:
    """Poll ``count`` until it reaches ``target`` or ``wait`` s after the push ended.

    Returns the monotonic time of the last increase seen and the last count.
    """
    last, last_at, deadline = 0, time.monotonic(), None
    while True:
        now = time.monotonic()
        seen = count()
        if seen != last:
            last, last_at = seen, now
        if last >= target:
            return last_at, last
        if push_done.is_set():
            deadline = deadline or now + wait
            if now >= deadline:
                return last_at, last
        time.sleep(POLL)


def pushed_and_followed(
    port: int,
    called: str,
    folder: Path,
    total: int,
    link: FlappingLink,
    count: Callable[[], int],
    wait: float,
) -> tuple[float, float]:
    """Push while following the destination; returns (push seconds, end-to-end seconds)."""
    done = threading.Event()
    errors: list[BaseException] = []
    push_seconds = [0.0]

    def pusher() -> None:
        begun = time.monotonic()
        try:
            push(port, called, folder, total)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller)
            errors.append(exc)
        push_seconds[0] = time.monotonic() - begun
        done.set()

    start = time.monotonic()
    link.start_flapping()
    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    last_at, _ = follow(count, total, done, wait)
    done.wait()
    thread.join()
    if errors:
        raise errors[0]
    return push_seconds[0], max(last_at - start, 1e-9)


# -- medai ----------------------------------------------------------------------------------


def medai_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDAI_")}
    return env | {"MEDAI_HOME": str(home), "COLUMNS": "250", "MEDAI_KIT_PASSPHRASE": PASSPHRASE,
                  "MEDAI_SERVE_MODEL": ""} | extra  # fmt: skip


def medai(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "medai.cli", *args],
        env=medai_env(home), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return run


def medai_checked(home: Path, *args: str) -> str:
    run = medai(home, *args)
    if run.returncode != 0:
        raise SystemExit(f"medai {' '.join(args)} failed:\n{run.stdout}{run.stderr}")
    return run.stdout


def catalog_counts(home: Path) -> tuple[int, int]:
    """(rows, unique SOP Instance UIDs) in the instances table of ``home``'s SQLite catalog."""
    from medai.config import Settings

    url = Settings(home=home).resolved_database_url
    path = url.split("///", 1)[1]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        rows, unique = db.execute(
            "SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances"
        ).fetchone()
    return int(rows), int(unique)


def medai_run(folder: Path, total: int, work: Path, args: argparse.Namespace) -> Result:
    centre_home, edge_home = work / "centre", work / "edge"
    medai_checked(centre_home, "campaign", "init", str(REPO / "collection/example-campaign.toml"))
    centre = ServeProcess(medai_env(centre_home))
    link = FlappingLink(centre.port, every=args.cut_every, down=args.down)
    edge: subprocess.Popen[str] | None = None
    log_path = work / "edge-run.log"
    try:
        medai_checked(centre_home, "campaign", "site-kit", "site-a", "--out", str(work / "kit"),
                      "--centre-url", f"http://127.0.0.1:{link.port}")  # fmt: skip
        medai_checked(edge_home, "edge", "init", str(work / "kit"))
        port = free_port()
        with log_path.open("w") as log:
            edge = subprocess.Popen(
                [sys.executable, "-m", "medai.cli", "edge", "run", "--host", "127.0.0.1",
                 "--port", str(port), "--drain-seconds", "5"],
                env=medai_env(edge_home), stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while echo(port).returncode != 0:
            if edge.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("medai edge run did not start:\n" + log_path.read_text())
            time.sleep(0.2)

        def arrived() -> int:
            return catalog_counts(centre_home)[1]

        push_seconds, seconds = pushed_and_followed(
            port, "MEDAI", folder, total, link, arrived, args.wait
        )
        link.stop_flapping()
        rows, unique = catalog_counts(centre_home)
        # The last acknowledgement may trail the centre's commit: let the outbox settle.
        settle = time.monotonic() + 30
        while True:
            with sqlite3.connect(edge_home / "edge" / "outbox.sqlite", timeout=10) as db:
                queued, attempts, acked = db.execute(
                    "SELECT count(*), coalesce(sum(attempts), 0),"
                    " coalesce(sum(acked_at IS NOT NULL), 0) FROM outbox"
                ).fetchone()
            if acked >= unique or time.monotonic() > settle:
                break
            time.sleep(POLL)
        reconcile = medai(edge_home, "collect", "reconcile", "--site", "site-a", "--json")
        try:
            differences = json.loads(reconcile.stdout.strip().splitlines()[-1])["differences"]
        except (ValueError, IndexError, KeyError):
            differences = None
        return Result(
            "medai", total, push_seconds, seconds, unique, rows, link.cuts,
            link.reset_connections, resent=max(0, int(attempts) - int(queued)),
            extra={"edge_catalog": catalog_counts(edge_home)[1], "outbox": int(queued),
                   "acknowledged": int(acked), "reconcile_differences": differences},
        )  # fmt: skip
    finally:
        if edge is not None and edge.poll() is None:
            edge.send_signal(signal.SIGTERM)
            try:
                edge.wait(timeout=60)
            except subprocess.TimeoutExpired:
                edge.kill()
        link.close()
        centre.stop()


# -- Orthanc --------------------------------------------------------------------------------


class Router:
    """Forwards what Orthanc A receives to its peer ``dest`` with asynchronous store jobs."""

    def __init__(self, source: Orthanc, via: str, retry_after: float = 1.0) -> None:
        self.source, self.via, self.retry_after = source, via, retry_after
        self.since = int(source.request("GET", "/changes?last")["Last"])
        self.jobs: dict[str, float | None] = {}  # job id -> when it failed (None: not failed)
        self.sizes: dict[str, int] = {}  # job id -> instances in it
        self.retries = 0  # jobs resubmitted
        self.resent = 0  # instances in resubmitted jobs
        self.submitted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> Router:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._forward_new()
                self._retry_failed()
            except Exception as exc:  # noqa: BLE001 (kept, the loop goes on)
                self.errors.append(f"{exc.__class__.__name__}: {str(exc)[:200]}")

    def _forward_new(self) -> None:
        new: list[str] = []
        while True:
            answer = self.source.request("GET", f"/changes?since={self.since}&limit=1000")
            new += [c["ID"] for c in answer["Changes"] if c["ChangeType"] == "NewInstance"]
            self.since = int(answer["Last"])
            if answer["Done"]:
                break
        if new:
            job = self.source.request(
                "POST", f"/{self.via}/dest/store", json={"Resources": new, "Asynchronous": True}
            )
            self.jobs[str(job["ID"])] = None
            self.sizes[str(job["ID"])] = len(new)
            self.submitted += len(new)

    def _retry_failed(self) -> None:
        now = time.monotonic()
        for job_id, failed_at in list(self.jobs.items()):
            try:
                state = self.source.request("GET", f"/jobs/{job_id}")["State"]
            except Exception as exc:  # noqa: BLE001 (one job's trouble must not stall the rest)
                self.errors.append(f"job {job_id}: {exc.__class__.__name__}: {str(exc)[:160]}")
                continue
            if state == "Success":
                del self.jobs[job_id]
            elif state == "Failure":
                if failed_at is None:
                    self.jobs[job_id] = now
                elif now - failed_at >= self.retry_after:
                    self.source.request("POST", f"/jobs/{job_id}/resubmit", json={})
                    self.jobs[job_id] = None
                    self.retries += 1
                    self.resent += self.sizes[job_id]


def orthanc_run(folder: Path, total: int, args: argparse.Namespace) -> Result:
    with Orthanc(aet="ORTHANCB") as dest:
        link_port = dest.dicom_port if args.orthanc_via == "modalities" else dest.http_port
        link = FlappingLink(link_port, every=args.cut_every, down=args.down)
        try:
            # Orthanc keeps the last 10 finished jobs by default: a failed job older than that
            # is gone (404) before the router can resubmit it, which would count as lost.
            extra: dict[str, Any] = {"JobsHistorySize": 100_000}
            if args.orthanc_via == "peers":
                extra["OrthancPeers"] = {"dest": [f"http://127.0.0.1:{link.port}/"]}
            with Orthanc(
                aet="ORTHANCA",
                modalities={"dest": ("ORTHANCB", "127.0.0.1", link.port)},
                extra_config=extra,
            ) as source:
                assert source.process is not None
                deadline = time.monotonic() + 60
                while echo(source.dicom_port).returncode != 0:
                    if time.monotonic() > deadline:
                        raise SystemExit("Orthanc A did not answer C-ECHO")
                    time.sleep(0.2)

                def arrived() -> int:
                    return int(dest.request("GET", "/statistics")["CountInstances"])

                with Router(source, args.orthanc_via) as router:
                    push_seconds, seconds = pushed_and_followed(
                        source.dicom_port, "ORTHANCA", folder, total, link, arrived, args.wait
                    )
                link.stop_flapping()
                received = len(source.instances())
                listed = dest.request("GET", "/instances?expand")
                uids = [item["MainDicomTags"]["SOPInstanceUID"] for item in listed]
                return Result(
                    "orthanc", total, push_seconds, seconds, len(set(uids)), len(uids),
                    link.cuts, link.reset_connections, router.resent,
                    extra={"jobs_resubmitted": router.retries, "received_at_a": received,
                           "forwarded_by_router": router.submitted,
                           "jobs_left": len(router.jobs), "router_errors": router.errors[:5],
                           "via": args.orthanc_via},
                )  # fmt: skip
        finally:
            link.close()


# -- report ---------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\nN={args.instances}, link cut every {args.cut_every:g} s for {args.down:g} s, "
        f"bounded wait {args.wait:g} s after the push"
    )
    header = (
        f"  {'system':<9}{'inst/s':>8}{'seconds':>9}{'push s':>8}{'arrived':>9}{'lost':>6}"
        f"{'dupl.':>7}{'cuts':>6}{'resets':>8}{'re-sent':>9}"
    )
    print(header)
    for r in results:
        print(
            f"  {r.system:<9}{r.rate:>8.1f}{r.seconds:>9.1f}{r.push_seconds:>8.1f}{r.arrived:>9}"
            f"{r.lost:>6}{r.duplicates:>7}{r.link_cuts:>6}{r.connections_reset:>8}{r.resent:>9}"
        )
    by = {r.system: r for r in results}
    if "medai" in by and "orthanc" in by and by["orthanc"].rate > 0:
        m, o = by["medai"], by["orthanc"]
        verdict = m.lost == 0 and m.duplicates == 0 and m.rate >= o.rate
        print(
            f"  medai / Orthanc = {m.rate / o.rate:.2f}x; target (0 lost, 0 duplicates, "
            f">= 1.0x): {'met' if verdict else 'NOT met'}"
        )
    for r in results:
        print(f"  {r.system}: {json.dumps(r.extra)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300, help="instances pushed (N)")
    parser.add_argument("--cut-every", type=float, default=3.0, help="seconds between cuts")
    parser.add_argument("--down", type=float, default=1.0, help="seconds the link stays down")
    parser.add_argument(
        "--wait", type=float, default=180.0, help="seconds after the push to wait for arrivals"
    )
    parser.add_argument(
        "--orthanc-via",
        choices=("modalities", "peers"),
        default="modalities",
        help="Orthanc A's store job: C-STORE to a modality, or HTTP to an Orthanc peer",
    )
    parser.add_argument(
        "--only", choices=("medai", "orthanc"), default=None, help="run one system only"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if not 0 < args.down < args.cut_every:
        parser.error("need 0 < --down < --cut-every")
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dcmtk")

    work = Path(tempfile.mkdtemp(prefix="medai-bench-edge-"))
    try:
        print(f"generating {args.instances} CR/DX instances in {work} ...", flush=True)
        files = make_files(work / "files", args.instances)
        mib = sum(p.stat().st_size for p in files) / 2**20
        print(f"{len(files)} instances, {mib:.1f} MiB; {os.cpu_count()} CPU cores", flush=True)
        results = []
        for system in ("orthanc", "medai"):
            if args.only not in (None, system):
                continue
            os.sync()
            print(f"{system}: pushing and forwarding over the flapping link ...", flush=True)
            if system == "medai":
                results.append(medai_run(work / "files", len(files), work / "medai", args))
            else:
                results.append(orthanc_run(work / "files", len(files), args))
        report(results, args)
        if args.json is not None:
            document = {
                "date": dt.date.today().isoformat(),
                "cpu_count": os.cpu_count(),
                "instances": args.instances,
                "mib": round(mib, 2),
                "cut_every_s": args.cut_every,
                "down_s": args.down,
                "wait_s": args.wait,
                "results": {
                    r.system: asdict(r)
                    | {"rate": round(r.rate, 2), "lost": r.lost, "duplicates": r.duplicates}
                    for r in results
                },
            }
            args.json.write_text(json.dumps(document, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
