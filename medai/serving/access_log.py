"""The web service's access log, without the UIDs that request paths may carry.

A STOW-RS request names the sender's original StudyInstanceUID in its path
(``/dicomweb/studies/{study}``), and UIDs are identifiers the de-identification
replaces: they must not reach a log file. :class:`RedactUids` rewrites every path
segment that looks like a UID to ``{uid}`` before uvicorn's access log writes the line,
and the value of a ``reference`` query parameter (the caller's own study reference of
``POST /v1/predict``, which may be an accession number) to ``{reference}``, and the values of
DICOMweb query parameters (a QIDO-RS search for a real name) to ``{value}``.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

__all__ = ["RedactUids", "uvicorn_log_config"]

# A path segment of two or more dot-separated numbers: a UID (PS3.5 9.1) or close to one.
_UID_SEGMENT = re.compile(r"(?<=/)[0-9]+(?:\.[0-9]+)+(?=[/?#]|$)")
_REFERENCE = re.compile(r"(?<=[?&])reference=[^&#]*")
# QIDO-RS searches (``GET /dicomweb/...?PatientName=...``): whatever a person typed into a
# search (a real name or MRN that matches nothing) is redacted; paging and STOW-RS's site kept.
_DICOMWEB_VALUE = re.compile(
    r"(?<=[?&])(?!(?:limit|offset|includefield|fuzzymatching|site)=)([^=&#]+)=[^&#]*"
)


class RedactUids(logging.Filter):
    """Replace UID path segments in uvicorn access records (args: client, method, path, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            if isinstance(args[2], str):
                path = _UID_SEGMENT.sub("{uid}", args[2])
                path = _REFERENCE.sub("reference={reference}", path)
                if path.startswith("/dicomweb/") and "?" in path:
                    path = _DICOMWEB_VALUE.sub(r"\1={value}", path)
                args[2] = path
                record.args = tuple(args)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with :class:`RedactUids` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_uids"] = {"()": f"{__name__}.RedactUids"}
    config["handlers"]["access"].setdefault("filters", []).append("redact_uids")
    return config
