"""No DICOM value reaches a log: `medai serve`, `medai -v collect listen` and `collect import`.

The filter itself (medai.log_privacy) first; then each receiver is run as a user runs it (a
subprocess, at debug level) and sent files where a UID holds a name (pydicom warns about it,
quoting the value), beside the planted PHI of the synthetic studies: everything the process
printed must hold none of those values.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom import config as pydicom_config

from medai.config import Settings
from medai.demo.services import STORESCU_PROPOSE
from medai.dicom.synth import generate
from medai.log_privacy import WithholdDicomValues, install, with_withheld_values
from tests.serving.helpers import ServeProcess, bearer, multipart, new_key
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import SITE_A_AE, echo, free_port

NAME = "FERREIRA^Ignatius"  # where a UID should be: pydicom's warning quotes it
PATIENT_NAME = "VANDERMEER^Cornelis"


@dataclass(frozen=True)
class Planted:
    """Input files and every value of theirs that must never reach a log."""

    root: Path
    files: list[Path]
    secrets: frozenset[str]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """Two small synthetic studies of site-a (paths embed MRN and accession) and a named UID."""
    root = tmp_path_factory.mktemp("planted")
    synth = generate(root, studies=2, seed=17, sites=("site-a",), image_size=32, ct_slices=2)
    ds = pydicom.dcmread(synth.files[0])
    secrets = {NAME, *NAME.split("^"), PATIENT_NAME, *PATIENT_NAME.split("^")}
    secrets |= synth.phi_values | synth.uid_values
    secrets |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
    named = []
    with pydicom_config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the values are invalid on purpose
        ds.PatientName = PATIENT_NAME
        # A name where a UID belongs, in an element de-identification reads (and replaces):
        # this file is stored, and pydicom warns when it converts the element.
        ds.FrameOfReferenceUID = NAME
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.4711"
        named.append(synth.files[0].parent / "named-frame.dcm")
        ds.save_as(named[-1], enforce_file_format=True)
        # ... and as the SOP Instance UID itself: the receivers read it first.
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = NAME
        named.append(synth.files[0].parent / "named-sop.dcm")
        ds.save_as(named[-1], enforce_file_format=True)
    secrets.add("2.25.4711")
    return Planted(root, [*synth.files, *named], frozenset(secrets))


def _leaks(output: str, secrets: Iterable[str]) -> list[str]:
    """The secrets found in ``output``, case-insensitively (a log may change the case)."""
    text = output.lower()
    return sorted(value for value in secrets if value.lower() in text)


def _withheld_warning_reported(output: str) -> None:
    # pydicom's warning still reaches the operator, with what and where, without the value.
    found = re.search(r"invalid value for VR UI in \([0-9A-F]{4},[0-9A-F]{4}\) \w+UID \(value "
                      r"withheld\)", output)  # fmt: skip
    assert found, output


class _Collect(logging.Handler):
    """A handler that keeps what it would write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def collected(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Collect]:
    """A handler on the root logger with the filter installed; all restored afterwards."""
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    handler = _Collect()
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.DEBUG)
    root.addHandler(handler)
    install([handler])
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_pydicom_validation_warning_says_what_and_where_not_the_value(
    collected: _Collect,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        ds = pydicom.Dataset()
        ds.SOPInstanceUID = NAME  # pydicom warns (WARN is its default reading mode)
        raw = pydicom.Dataset()
        raw.PatientName = "x" * 80  # over PN's 64 characters
    assert NAME not in collected.text and "Ignatius" not in collected.text
    assert "x" * 80 not in collected.text
    assert (
        "pydicom WARNING an invalid value for VR UI in (0008,0018) SOPInstanceUID "
        "(value withheld)" in collected.lines
    )
    assert any("(0010,0010) PatientName" in line for line in collected.lines)
    # pydicom logs each warning it issues: its copy in `warnings` is not shown twice. (Other
    # py.warnings lines may appear: a ResourceWarning of another test's garbage, say.)
    assert sum("(0008,0018)" in line for line in collected.lines) == 1
    assert not any(
        line.startswith("py.warnings") and ("VR UI" in line or "(0010,0010)" in line)
        for line in collected.lines
    )


def test_pynetdicom_dumps_keep_the_protocol_and_lose_the_identifiers(
    collected: _Collect,
) -> None:
    log = logging.getLogger("pynetdicom.events")
    log.debug("Affected SOP Instance UID     : 1.2.826.0.1.3680043.8.498.1")
    log.debug("Affected SOP Class UID        : CT Image Storage")
    log.debug("  Accepted Transfer Syntax: =Implicit VR Little Endian")
    log.debug("(0010,0010) PN [%s]", PATIENT_NAME)
    log.warning("Non-conformant 'Affected SOP Instance UID' value '%s'", NAME)
    log.info("transfer syntax %s, instance %s", "1.2.840.10008.1.2.1", "1.2.3.4.5.6")
    assert collected.lines == [
        "pynetdicom.events DEBUG Affected SOP Instance UID     : (withheld)",
        "pynetdicom.events DEBUG Affected SOP Class UID        : CT Image Storage",
        "pynetdicom.events DEBUG   Accepted Transfer Syntax: =Implicit VR Little Endian",
        "pynetdicom.events DEBUG (0010,0010) PN (withheld)",
        "pynetdicom.events WARNING a non-conformant Affected SOP Instance UID (value withheld)",
        "pynetdicom.events INFO transfer syntax 1.2.840.10008.1.2.1, instance (withheld)",
    ]


def test_exception_messages_are_withheld_their_traceback_kept(collected: _Collect) -> None:
    def convert() -> None:
        raise ValueError(f"cannot convert {NAME!r}")

    try:
        try:
            convert()
        except ValueError as exc:
            raise RuntimeError(f"while reading {PATIENT_NAME}") from exc
    except RuntimeError:
        logging.getLogger("medai.test").exception("could not read an input")
    assert NAME not in collected.text and PATIENT_NAME not in collected.text
    assert "in convert" in collected.text  # the frames stay
    assert "builtins.ValueError: (message withheld)" in collected.text
    assert "builtins.RuntimeError: (message withheld)" in collected.text


def test_other_warnings_are_logged_without_values(collected: _Collect) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        install([])  # catch_warnings restored showwarning: route warnings again
        warnings.warn(f"odd study {PATIENT_NAME} 1.2.3.4.5 '{NAME}'", UserWarning, stacklevel=1)
    assert len(collected.lines) == 1, collected.lines
    line = collected.lines[0]
    assert line.startswith("py.warnings WARNING UserWarning: odd study (withheld)"), line
    assert PATIENT_NAME not in line and NAME not in line and "1.2.3.4.5" not in line


def test_uvicorn_log_config_withholds_values() -> None:
    from medai.serving.access_log import uvicorn_log_config

    config = with_withheld_values(uvicorn_log_config())
    assert all("withhold_dicom_values" in h["filters"] for h in config["handlers"].values())
    assert "redact_uids" in config["handlers"]["access"]["filters"]  # kept
    logging.config.dictConfig(config | {"disable_existing_loggers": False})
    handler = logging.getLogger("uvicorn.error").handlers or logging.getLogger("uvicorn").handlers
    assert any(isinstance(f, WithholdDicomValues) for f in handler[0].filters)


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_logs_no_value_of_a_stow_request(
    campaign: Settings, planted: Planted, workers: int
) -> None:
    key = new_key(campaign, "steward", "site-a-pacs")
    server = ServeProcess({"MEDAI_LOG_LEVEL": "DEBUG"}, "--workers", str(workers))
    try:
        body, content_type = multipart([path.read_bytes() for path in planted.files])
        study = str(pydicom.dcmread(planted.files[0], stop_before_pixels=True).StudyInstanceUID)
        for url in (f"{server.url}/dicomweb/studies", f"{server.url}/dicomweb/studies/{study}"):
            response = requests.post(
                url,
                params={"site": "site-a"},
                data=body,
                headers=bearer(key) | {"Content-Type": content_type},
                timeout=60,
            )
            assert response.status_code in (200, 202, 409), response.text
        server.wait_for_output("POST /dicomweb/studies/{uid}?site=site-a")
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
    assert _leaks(output, planted.secrets) == [], output
    _withheld_warning_reported(output)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_verbose_listener_logs_no_value_of_a_cstore_push(
    campaign: Settings, planted: Planted, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "listen.log"  # a file, not a pipe: debug output would fill a pipe
    with log.open("w") as out:
        listener = subprocess.Popen(
            [sys.executable, "-m", "medai.cli", "-v", "collect", "listen", "--host", "127.0.0.1",
             "--port", str(port)],
            env={**os.environ, "COLUMNS": "250"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while echo(port).returncode != 0:
            assert listener.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the listener did not answer C-ECHO"
            time.sleep(0.2)
        by_syntax: dict[str, list[str]] = {}
        for path in planted.files:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            by_syntax.setdefault(str(meta.TransferSyntaxUID), []).append(str(path))
        pushes = [
            subprocess.run(
                [
                    "storescu",
                    *STORESCU_PROPOSE[syntax],
                    "-aet",
                    SITE_A_AE,
                    "-aec",
                    "MEDAI",
                    "127.0.0.1",
                    str(port),
                    *paths,
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )  # fmt: skip
            for syntax, paths in sorted(by_syntax.items())
        ]
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(timeout=60)
    output = log.read_text()
    assert listener.returncode == 0, output
    for push in pushes:  # every file was taken into custody (stored or quarantined)
        assert push.returncode == 0, f"{push.stdout}{push.stderr}\n{output}"
    assert "C-STORE RQ" in output, output  # pynetdicom's debug dump was there
    assert _leaks(output, planted.secrets) == [], output
    _withheld_warning_reported(output)


@pytest.mark.slow
def test_verbose_import_logs_no_value(campaign: Settings, planted: Planted) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "medai.cli", "-v", "collect", "import", str(planted.root),
         "--site", "site-a", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "stored" in output, output  # debug level: each stored instance is logged
    assert _leaks(output, planted.secrets) == [], output
