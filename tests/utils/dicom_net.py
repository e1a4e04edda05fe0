"""Network helpers of the tests: free loopback ports, dcmtk's echoscu, a running listener."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from medai.demo.services import free_port

__all__ = ["SITE_A_AE", "Listener", "echo", "free_port"]

SITE_A_AE = "STMARY_PACS"  # a calling AE title of site-a in collection/example-campaign.toml


def echo(port: int, calling: str = SITE_A_AE) -> subprocess.CompletedProcess[str]:
    """dcmtk's C-ECHO from ``calling`` to medai's AE on ``port``."""
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "MEDAI", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


class Listener:
    """``medai collect listen`` in a child process, ready once it answers C-ECHO."""

    def __init__(self, *options: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medai.cli", "collect", "listen", "--host", "127.0.0.1",
             "--port", str(self.port), *options],
            env={**os.environ, "COLUMNS": "250"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.output = ""
        deadline = time.monotonic() + 60
        while echo(self.port).returncode != 0:
            if self.process.poll() is not None:
                raise AssertionError(self.stop())
            assert time.monotonic() < deadline, "the listener did not answer C-ECHO"
            time.sleep(0.2)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60) -> str:
        """Signal the listener, wait for it to exit and return all it printed.

        ``sig=None``: it was signalled already, only wait. A second SIGTERM cuts the drain
        short, and one that lands while the interpreter is exiting kills it (-15).
        """
        if self.process.stdout is None or self.process.stdout.closed:
            return self.output  # already stopped
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        output, _ = self.process.communicate(timeout=timeout)
        self.output += output
        return self.output
