"""dcmtk over DICOM TLS, and ``medai collect listen`` with TLS options, for the TLS tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydicom.data import get_testdata_file

from tests.utils.certs import CertPair
from tests.utils.dicom_net import SITE_A_AE, free_port

__all__ = ["CT", "TlsListener", "dcmtk_tls", "storescu"]

CT = Path(str(get_testdata_file("CT_small.dcm")))  # stored by the pipeline (explicit VR LE)


def dcmtk_tls(ca: Path, client: CertPair | None) -> list[str]:
    """dcmtk's options for TLS trusting ``ca``: with ``client``'s certificate, or anonymous."""
    if client is None:
        return ["+tla", "+cf", str(ca)]
    return ["+tls", str(client.key), str(client.cert), "+cf", str(ca)]


def storescu(
    port: int, tls: list[str], calling: str = SITE_A_AE, files: tuple[Path, ...] = (CT,)
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu to medai's AE on loopback (``tls``: [] for plaintext)."""
    return subprocess.run(
        ["storescu", *tls, "-aet", calling, "-aec", "MEDAI", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def echoscu(port: int, tls: list[str], calling: str = SITE_A_AE) -> int:
    run = subprocess.run(
        ["echoscu", *tls, "-aet", calling, "-aec", "MEDAI", "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return run.returncode


class TlsListener:
    """``medai collect listen`` on loopback with ``options``, ready once ``ready_tls`` echoes."""

    def __init__(self, *options: str, ready_tls: list[str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medai.cli", "collect", "listen", "--host", "127.0.0.1",
             "--port", str(self.port), *options],
            env={**os.environ, "COLUMNS": "250"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while echoscu(self.port, ready_tls) != 0:
            if self.process.poll() is not None:
                raise AssertionError(self.stop())
            assert time.monotonic() < deadline, "the TLS listener did not answer C-ECHO"
            time.sleep(0.2)

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=60)
        return output
