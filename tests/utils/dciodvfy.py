"""Running dicom3tools' ``dciodvfy`` on DICOM bytes and comparing its errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["DCIODVFY", "added_errors", "errors"]

DCIODVFY = shutil.which("dciodvfy")
"""The validator's path, or None where dicom3tools is not installed."""

_INDEX = re.compile(r"\[\d+\]")
_VALUE = re.compile(r"= <[^>]*>")
_CHAR = re.compile(r"'.' \(0x[0-9a-f]+\)")


def errors(data: bytes) -> list[str]:
    """The ``Error - ...`` lines ``dciodvfy`` prints for one Part 10 file, as printed."""
    assert DCIODVFY is not None, "dciodvfy is not installed (apt install dicom3tools)"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "instance.dcm"
        path.write_bytes(data)
        run = subprocess.run(
            [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _normalised(line: str) -> str:
    """``line`` without what de-identification may rightly change: values, item numbers."""
    return _CHAR.sub("'?'", _VALUE.sub("= <>", _INDEX.sub("", line)))


def added_errors(before: bytes, after: bytes) -> set[str]:
    """Errors in ``after`` that ``before`` did not have (compared without values)."""
    known = {_normalised(line) for line in errors(before)}
    return {line for line in errors(after) if _normalised(line) not in known}
