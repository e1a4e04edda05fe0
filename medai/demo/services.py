"""The servers the demo starts (C-STORE listener, web service, MLflow UI) and how it talks to them.

Each server is the real command a deployment runs (``medai collect listen``, ``medai
serve``, ``mlflow ui``) in a child process with the demo's settings in its environment,
so what the demo shows is what a site or a clinician would see. Pushes use dcmtk's
``storescu`` where it is installed (what a PACS administrator tests with), pynetdicom
otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medai.config import Settings

__all__ = [
    "STORESCU_PROPOSE",
    "Server",
    "echo_ready",
    "free_port",
    "medai_command",
    "push_cstore",
    "server_env",
    "wait_for_http",
]


# dcmtk storescu's option that proposes each transfer syntax (explicit VR LE is its default).
STORESCU_PROPOSE: dict[str, list[str]] = {
    "1.2.840.10008.1.2.1": [],
    "1.2.840.10008.1.2": ["--propose-implicit"],
    "1.2.840.10008.1.2.1.99": ["--propose-deflated"],
    "1.2.840.10008.1.2.5": ["--propose-rle"],
    "1.2.840.10008.1.2.4.90": ["--propose-j2k-lossless"],
    "1.2.840.10008.1.2.4.91": ["--propose-j2k-lossy"],
    "1.2.840.10008.1.2.4.70": ["--propose-lossless"],
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of a child server: this process's, with the demo's settings pinned."""
    return {
        **os.environ,
        "MEDAI_HOME": str(settings.resolved_home),
        "MEDAI_DATABASE_URL": settings.resolved_database_url,
        "MEDAI_MLFLOW_TRACKING_URI": settings.resolved_mlflow_tracking_uri,
        "COLUMNS": "200",
    }


@dataclass
class Server:
    """A child server process whose output goes to a log file under the demo's home."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 120.0) -> None:
        """Wait until ``ready()`` is true; raise with the log's tail if the server died."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.3)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful: the listener drains, uvicorn finishes requests), then wait."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def medai_command(*args: str) -> list[str]:
    """``medai ARGS`` run by this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "medai.cli", *args]


def wait_for_http(url: str) -> Callable[[], bool]:
    """A readiness probe: true once ``url`` answers at all."""
    import requests

    def ready() -> bool:
        try:
            requests.get(url, timeout=2)
        except requests.RequestException:
            return False
        return True

    return ready


def echo_ready(port: int, calling: str, called: str) -> Callable[[], bool]:
    """A readiness probe: true once the listener accepts a C-ECHO from ``calling``."""

    def ready() -> bool:
        from pynetdicom import AE

        with socket.socket() as probe:
            # Only associate once the port is open: pynetdicom logs every refused connection.
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return False
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and int(status.Status) == 0

    return ready


def push_cstore(files: Sequence[Path], *, port: int, calling: str, called: str) -> tuple[str, int]:
    """Send ``files`` in one association; return the tool used and how many were acknowledged.

    Raises
    ------
    RuntimeError
        When the association fails or an instance is not acknowledged with Success.
    """
    if not files:
        return "none", 0
    storescu = shutil.which("storescu")
    if storescu is None:
        return "pynetdicom", _push_pynetdicom(files, port=port, calling=calling, called=called)
    from pydicom import dcmread

    # storescu proposes one family of transfer syntaxes per run: one run per syntax.
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(syntax, []).append(path)
    sent = 0
    for syntax, group in sorted(by_syntax.items()):
        if syntax not in STORESCU_PROPOSE:
            sent += _push_pynetdicom(group, port=port, calling=calling, called=called)
            continue
        run = subprocess.run(
            [storescu, *STORESCU_PROPOSE[syntax], "-aet", calling, "-aec", called,
             "127.0.0.1", str(port), *map(str, group)],
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"storescu failed ({run.returncode}): {run.stderr.strip()[-500:]}")
        sent += len(group)
    return "dcmtk storescu", sent


def _push_pynetdicom(files: Sequence[Path], *, port: int, calling: str, called: str) -> int:
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling)
    for pair in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(pair[0], [pair[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"the listener on port {port} refused the association")
    sent = 0
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != 0:
                raise RuntimeError(f"C-STORE not acknowledged (status {status})")
            sent += 1
    finally:
        assoc.release()
    return sent
