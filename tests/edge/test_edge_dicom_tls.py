"""`medai edge run` speaking DICOM TLS to the hospital's PACS (dcmtk `storescu +tls`).

The edge's C-STORE listener takes the same TLS options as `collect listen`: with a client
certificate the PACS's instances are stored, de-identified and forwarded to the centre; a
plaintext sender and one without a certificate are refused and nothing of theirs arrives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.edge.helpers import ct_files
from tests.edge.test_edge_e2e import (
    assert_all_arrived_once,
    clean_env,  # noqa: F401 (fixture)
    env_of,
    make_centre,
    make_edge,
    tmp,  # noqa: F401 (fixture)
    uids,
    wait_forwarded,
)
from tests.tls.helpers import dcmtk_tls, echoscu, storescu
from tests.utils.certs import TestCA
from tests.utils.dicom_net import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("storescu") is None and not os.environ.get("CI"),
        reason="dcmtk is not installed (apt-get install dcmtk)",
    ),
]


class _Log:
    """What ``wait_forwarded`` shows when it times out: the edge's log so far."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def output(self) -> str:
        return self.path.read_text(errors="replace")


def test_the_edge_takes_dicom_tls_with_client_certificates_only(tmp: Path) -> None:  # noqa: F811
    home, centre = make_centre(tmp)
    sites = make_edge(tmp, home, centre.url)
    ca = TestCA(tmp / "tls")
    server, client = ca.issue("edge-site-a", server=True), ca.issue("stmary-pacs")
    port = free_port()
    log = (tmp / "edge.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "medai.cli", "edge", "run", "--host", "127.0.0.1",
         "--port", str(port), "--drain-seconds", "5",
         "--tls-cert", str(server.cert), "--tls-key", str(server.key),
         "--tls-ca", str(ca.cert), "--require-client-cert"],
        env=env_of(sites.edge, MEDAI_EDGE_HEARTBEAT_SECONDS="1",
                   MEDAI_EDGE_BACKOFF_MAX_SECONDS="1"),
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while echoscu(port, dcmtk_tls(ca.cert, client)) != 0:
            assert process.poll() is None and time.monotonic() < deadline, "no TLS C-ECHO"
            time.sleep(0.2)
        files = ct_files(tmp / "pacs", 3, tag="tls")
        assert storescu(port, [], files=tuple(files)).returncode != 0  # plaintext
        assert storescu(port, dcmtk_tls(ca.cert, None), files=tuple(files)).returncode != 0
        sent = storescu(port, dcmtk_tls(ca.cert, client), files=tuple(files))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_forwarded(sites.edge, len(files), _Log(tmp / "edge.log"))  # type: ignore[arg-type]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert_all_arrived_once(sites, len(files))
        assert len(uids(sites.centre)) == len(files)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
        centre.stop()
    assert "TLS, client certificate required" in output, output
