"""C-STORE receive throughput: `medai collect listen` beside Orthanc, same storescu command.

dcmtk's storescu pushes the same N synthetic 512x512 CT instances, in one association
(and, with --concurrent K, in K associations at once), into:
  * medai  — `medai collect listen` (receive, de-identify, pseudonymize, store, catalog)
  * Orthanc — Debian's /usr/sbin/Orthanc (receive, index, store), a fresh one per run
and prints instances/s for each, their ratio (target: medai >= 0.5x Orthanc), and the
listener's resident memory sampled during the run: at 10 %, 50 % and 100 % of the
instances and its peak (target: flat as N grows).

    python benchmarks/receive.py [--n 2000] [--concurrent 4] [--database-url URL] [--nodelay]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ingest import make_files, reset_postgres  # noqa: E402
from tests.utils.orthanc import Orthanc  # noqa: E402

CALLING_AE = "STMARY_PACS"  # a site AE title of collection/example-campaign.toml
ACKNOWLEDGED = b"Received Store Response"
MARKS = (0.10, 0.50, 1.00)


@dataclass
class Run:
    """One push of every file to one receiver."""

    receiver: str
    instances: int
    seconds: float
    rss_at: dict[float, int] = field(default_factory=dict)  # fraction done -> bytes
    peak_rss: int = 0

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


class RssSampler:
    """Samples a process tree's resident memory every ``interval`` seconds (peak kept)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        try:
            processes = [self.process, *self.process.children(recursive=True)]
            return sum(p.memory_info().rss for p in processes)
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def storescu_command(port: int, called: str, folder: Path) -> list[str]:
    """The one command line both receivers get (``-v`` reports each acknowledgement)."""
    return [
        "storescu", "-v", "-aet", CALLING_AE, "-aec", called,
        "+sd", "+r", "127.0.0.1", str(port), str(folder),
    ]  # fmt: skip


def push(
    port: int,
    called: str,
    folders: Sequence[Path],
    total: int,
    env: dict[str, str],
    on_progress: Callable[[int], None],
) -> float:
    """Run one storescu per folder at once; returns the wall time until all are done."""
    done = [0]
    lock = threading.Lock()

    def follow(process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if ACKNOWLEDGED in line:
                with lock:
                    done[0] += 1
                    on_progress(done[0])

    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            storescu_command(port, called, folder),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for folder in folders
    ]
    readers = [threading.Thread(target=follow, args=(p,)) for p in processes]
    for reader in readers:
        reader.start()
    codes = [p.wait() for p in processes]
    seconds = time.perf_counter() - start
    for reader in readers:
        reader.join()
    if any(codes) or done[0] != total:
        raise SystemExit(f"storescu failed (exit codes {codes}; {done[0]} of {total} stored)")
    return seconds


def wait_for_echo(port: int, called: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the receiver exited with code {process.returncode}")
        echo = subprocess.run(
            ["echoscu", "-aet", CALLING_AE, "-aec", called, "127.0.0.1", str(port)],
            capture_output=True,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit("the receiver did not answer C-ECHO")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def medai_run(
    folders: Sequence[Path],
    total: int,
    home: Path,
    database_url: str | None,
    env: dict[str, str],
) -> Run:
    """Push into a fresh `medai collect listen` (new home; PostgreSQL emptied first)."""
    medai_env = {**os.environ, "MEDAI_HOME": str(home), "COLUMNS": "200"}
    if database_url:
        medai_env["MEDAI_DATABASE_URL"] = database_url
        if database_url.startswith("postgresql"):
            reset_postgres(database_url)
    medai = [sys.executable, "-m", "medai.cli"]
    campaign = REPO / "collection" / "example-campaign.toml"
    subprocess.run(
        [*medai, "campaign", "init", str(campaign)], env=medai_env, check=True, capture_output=True
    )
    port = free_port()
    log = (home / "listen.log").open("wb")
    listener = subprocess.Popen(
        [*medai, "collect", "listen", "--host", "127.0.0.1", "--port", str(port)],
        env=medai_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_echo(port, "MEDAI", listener)
        run = measured("medai", port, "MEDAI", listener.pid, folders, total, env)
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(timeout=120)
        log.close()
    summary = (home / "listen.log").read_text().strip().splitlines()
    print("  medai listener: " + " ".join(line.strip() for line in summary[-3:]))
    return run


def orthanc_run(folders: Sequence[Path], total: int, env: dict[str, str]) -> Run:
    """Push into a fresh Orthanc (its defaults: SQLite index, files synced to disk)."""
    with Orthanc(aet="ORTHANC") as orthanc:
        assert orthanc.process is not None
        wait_for_echo(orthanc.dicom_port, "ORTHANC", orthanc.process)
        run = measured(
            "orthanc", orthanc.dicom_port, "ORTHANC", orthanc.process.pid, folders, total, env
        )
        stored = len(orthanc.instances())
        if stored != total:
            raise SystemExit(f"Orthanc holds {stored} of {total} instances")
    return run


def measured(
    name: str,
    port: int,
    called: str,
    pid: int,
    folders: Sequence[Path],
    total: int,
    env: dict[str, str],
) -> Run:
    with RssSampler(pid) as sampler:
        rss_at: dict[float, int] = {}
        marks = [(fraction, max(1, round(total * fraction))) for fraction in MARKS]

        def on_progress(done: int) -> None:
            for fraction, count in marks:
                if done == count:
                    rss_at[fraction] = sampler.rss()

        seconds = push(port, called, folders, total, env, on_progress)
    return Run(name, total, seconds, rss_at, max([sampler.peak, *rss_at.values()]))


def report(runs: Sequence[Run], label: str) -> None:
    by_name = {run.receiver: run for run in runs}
    medai, orthanc = by_name["medai"], by_name["orthanc"]
    print(f"\n{label}")
    print(f"  {'receiver':<10}{'instances/s':>14}{'seconds':>10}")
    for run in (medai, orthanc):
        print(f"  {run.receiver:<10}{run.rate:>14.1f}{run.seconds:>10.1f}")
    print(f"  medai / Orthanc = {medai.rate / orthanc.rate:.2f}x (target >= 0.5x)")
    for run in (medai, orthanc):
        marks = ", ".join(
            f"{int(fraction * 100)}%: {run.rss_at.get(fraction, 0) / 2**20:.0f} MiB"
            for fraction in MARKS
        )
        print(f"  {run.receiver} RSS {marks}; peak {run.peak_rss / 2**20:.0f} MiB")


def split(files: Sequence[Path], folder: Path, parts: int) -> list[Path]:
    """Hard-link ``files`` into ``parts`` sub-folders (one per association)."""
    folders = [folder / f"part{k}" for k in range(parts)]
    for sub in folders:
        sub.mkdir(parents=True)
    for index, path in enumerate(files):
        os.link(path, folders[index % parts] / path.name)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="number of 512x512 instances")
    parser.add_argument(
        "--concurrent", type=int, default=4, help="also push in K associations at once (0: no)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="medai catalog URL (default SQLite); a PostgreSQL database is emptied first",
    )
    parser.add_argument(
        "--nodelay",
        action="store_true",
        help="run storescu with TCP_NODELAY=1 (Nagle off on the sender) for both receivers",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dcmtk")

    work = Path(tempfile.mkdtemp(prefix="medai-bench-receive-"))
    env = {**os.environ}
    if args.nodelay:
        env["TCP_NODELAY"] = "1"
    try:
        print(f"generating {args.n} 512x512 CT-like instances in {work} ...", flush=True)
        files = make_files(work / "files", args.n)
        mib = sum(p.stat().st_size for p in files) / 2**20
        catalog = "PostgreSQL" if args.database_url else "SQLite"
        print(
            f"{len(files)} instances, {mib:.0f} MiB; {os.cpu_count()} CPU cores; "
            f"medai catalog {catalog}; sender Nagle {'off' if args.nodelay else 'on'}"
        )
        print("storescu command: " + " ".join(storescu_command(0, "<AET>", Path("<folder>"))))

        layouts = [("one association", split(files, work / "one", 1))]
        if args.concurrent > 1:
            parts = split(files, work / "many", args.concurrent)
            layouts.append((f"{args.concurrent} concurrent associations", parts))
        for label, folders in layouts:
            runs = []
            for receiver in ("orthanc", "medai"):
                # No dirty pages left by the run before: its writeback would stall fsyncs.
                os.sync()
                print(f"{label}: pushing to {receiver} ...", flush=True)
                if receiver == "medai":
                    home = work / f"medai-home-{len(folders)}"
                    runs.append(medai_run(folders, len(files), home, args.database_url, env))
                    if not args.keep:
                        shutil.rmtree(home, ignore_errors=True)
                else:
                    runs.append(orthanc_run(folders, len(files), env))
            report(runs, f"{label}, N={args.n}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
