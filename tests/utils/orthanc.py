"""A real Orthanc (Debian's ``/usr/sbin/Orthanc``) on loopback, for tests and benchmarks.

``with Orthanc(aet="STMARY_PACS") as pacs:`` starts Orthanc with a configuration
written to a temporary folder: free HTTP and DICOM ports, its own storage and
index, the DICOMweb plugin at ``/dicom-web/``, HTTP reachable from loopback only
and without authentication. ``pacs.http_url``, ``pacs.dicomweb_url`` and
``pacs.dicom_port`` say where it is; ``upload``, ``push_to`` and ``studies``
drive its REST API. Its log is kept, and quoted when it fails to start or a
request fails. Orthanc is stopped (SIGTERM, then SIGKILL) and its folder removed
on exit.

:func:`require_orthanc` skips a test when Orthanc is not installed, and fails it
instead under CI (``.ci/run`` installs the ``orthanc`` and ``orthanc-dicomweb``
packages).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from tests.utils.dicom_net import free_port

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC", "Orthanc", "OrthancError", "require_orthanc"]

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_START_ATTEMPTS = 3  # a free port may be taken by a parallel test before Orthanc binds it


class OrthancError(RuntimeError):
    """Orthanc did not start, or answered a request with an error (the log tail is quoted)."""


def require_orthanc() -> None:
    """Skip the calling test when Orthanc or its DICOMweb plugin is missing; fail under CI."""
    import pytest

    missing = [str(path) for path in (ORTHANC, DICOMWEB_PLUGIN) if not path.exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (apt-get install orthanc orthanc-dicomweb)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Orthanc:
    """One Orthanc server on loopback, for the length of a ``with`` block.

    Parameters
    ----------
    aet
        Orthanc's own AE title: the calling AE title of its C-STOREs, so it must be a
        campaign AE title (e.g. ``STMARY_PACS``) when it pushes to medai's listener.
    modalities
        The DICOM peers it may push to, as ``{name: (ae_title, host, port)}``; more
        can be added once it runs with :meth:`set_modality`.
    credentials
        ``(user, password)``: require HTTP basic authentication with them (the
        helpers here send them); by default HTTP is open, to loopback only.
    extra_config
        Top-level configuration entries merged over the defaults (e.g. for a benchmark).
    startup_timeout
        Seconds to wait for ``GET /system`` to answer.
    """

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        credentials: tuple[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.credentials = credentials
        self.extra_config = dict(extra_config or {})
        self.startup_timeout = startup_timeout
        self.http_port = 0
        self.dicom_port = 0
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()
        self._session.trust_env = False  # never send loopback requests through a proxy
        self._session.auth = credentials

    # -- where it is ------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "Orthanc has not been started"
        return self.workdir / "orthanc.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of Orthanc's log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def config(self) -> dict[str, Any]:
        """The configuration Orthanc is (or will be) started with."""
        assert self.workdir is not None
        config: dict[str, Any] = {
            "Name": f"medai-test-{self.aet}",
            "DicomAet": self.aet,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            # Loopback only, so no credentials are needed unless asked for.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.credentials is not None,
            "RegisteredUsers": dict([self.credentials]) if self.credentials else {},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {
                name: [title, host, port] for name, (title, host, port) in self.modalities.items()
            },
            # Close associations at once after a push (the default keeps them 5 s).
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            "SaveJobs": False,
            "StorageCompression": False,
        }
        config.update(self.extra_config)
        return config

    def start(self) -> None:
        """Start Orthanc and wait until its REST API answers.

        Raises
        ------
        OrthancError
            When it exits or does not answer in time (its log tail is in the message).
        """
        require_orthanc()
        self.workdir = Path(tempfile.mkdtemp(prefix="medai-orthanc-"))
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.http_port, self.dicom_port = free_port(), free_port()
            config_path = self.workdir / "orthanc.json"
            config_path.write_text(json.dumps(self.config(), indent=2))
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(ORTHANC), str(config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,
                )
            try:
                self._wait_ready()
                return
            except OrthancError:
                exited = self.process.poll() is not None
                self._terminate()
                # A port taken between probing and binding: try other ports.
                if not exited or attempt == _START_ATTEMPTS:
                    self._remove_workdir()
                    raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with code {self.process.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                if self._session.get(f"{self.http_url}/system", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise OrthancError(
            f"Orthanc did not answer within {self.startup_timeout:.0f} s:\n" + self.log_tail()
        )

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 20 s) and remove its folder."""
        self._terminate()
        self._session.close()
        self._remove_workdir()

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _remove_workdir(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- REST API ---------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call Orthanc's REST API; returns the decoded JSON answer (or None).

        Raises
        ------
        OrthancError
            On an HTTP error status, quoting Orthanc's answer and log tail.
        """
        kwargs.setdefault("timeout", 120)
        response = self._session.request(method, f"{self.http_url}{path}", **kwargs)
        if not response.ok:
            raise OrthancError(
                f"{method} {path}: HTTP {response.status_code} {response.text[:2000]}\n"
                + self.log_tail()
            )
        return response.json() if response.content else None

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM instance (``POST /instances``); returns Orthanc's answer.

        The answer's ``ID`` is the instance's Orthanc id, ``ParentStudy`` its study's.
        """
        answer = self.request(
            "POST", "/instances", data=data, headers={"Content-Type": "application/dicom"}
        )
        assert isinstance(answer, dict), answer
        return answer

    def upload_files(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        """:meth:`upload` each file in turn."""
        return [self.upload(Path(path).read_bytes()) for path in paths]

    def set_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare (or change) a DICOM peer Orthanc may push to."""
        self.modalities[name] = (ae_title, host, port)
        self.request("PUT", f"/modalities/{name}", json=[ae_title, host, port])

    def push_to(self, modality: str, resource_ids: Sequence[str]) -> dict[str, Any]:
        """C-STORE the given patients/studies/series/instances to ``modality``.

        Synchronous: returns once every instance was sent (Orthanc's job answer).

        Raises
        ------
        OrthancError
            When the peer refused or failed any instance.
        """
        answer = self.request(
            "POST",
            f"/modalities/{modality}/store",
            json={"Resources": list(resource_ids), "Synchronous": True},
        )
        assert isinstance(answer, dict), answer
        return answer

    def studies(self) -> list[str]:
        """Orthanc ids of the studies it holds."""
        answer = self.request("GET", "/studies")
        assert isinstance(answer, list), answer
        return [str(item) for item in answer]

    def instances(self) -> list[str]:
        """Orthanc ids of the instances it holds."""
        answer = self.request("GET", "/instances")
        assert isinstance(answer, list), answer
        return [str(item) for item in answer]
