"""No DICOM value in a log: the filter every log handler of medai carries, and warnings.

pydicom and pynetdicom quote the values they complain about ("Invalid value for VR UI:
'FERREIRA^Ignatius'"), pynetdicom's debug output dumps each DIMSE message with its SOP
Instance UID, and an exception's text may hold whatever value it tripped on. Logs are kept,
shipped and read by people who may not see patient data, so :class:`WithholdDicomValues`
rewrites, before any handler writes them:

* records of the DICOM libraries (:data:`DICOM_LIBRARIES`): a validation complaint becomes
  what and where, never the value ("pydicom: an invalid value for VR UI in (0008,0018)
  SOPInstanceUID (value withheld)"); any other message keeps its words but loses what may be a
  value: quoted text, UIDs that are not well-known ones, labelled UIDs and identifiers of
  DIMSE dumps, values of data set dumps, names (``^``) and long digit runs;
* the exception of every record (any logger): its traceback stays, its messages go.

:func:`install` puts the filter on the root logger's handlers and routes :mod:`warnings`
through logging with the same treatment (pydicom logs each warning it issues to its own
logger too, so its copies in :mod:`warnings` are dropped). The command line, ``medai serve``
(and uvicorn's handlers, :func:`with_withheld_values`) and every worker process install it
where they configure logging (:func:`configure_worker` for a process started afresh).
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

__all__ = [
    "DICOM_LIBRARIES",
    "WITHHELD",
    "WithholdDicomValues",
    "configure_worker",
    "install",
    "withhold_values",
    "with_withheld_values",
]

WITHHELD: Final = "(withheld)"
# Loggers (and packages) whose messages may quote values of the data sets they handle.
DICOM_LIBRARIES: Final = frozenset(
    {"pydicom", "pynetdicom", "highdicom", "dicomweb_client", "pylibjpeg", "openjpeg", "libjpeg"}
)
_MARK: Final = "_medai_values_withheld"  # set on a record once rewritten (several handlers)
_STACK_DEPTH: Final = 60  # frames searched for the element being validated

# What a complaint is about, from the messages of pydicom's and pynetdicom's validators. Only
# named groups matched as VR codes, numbers and words become part of the summary.
_COMPLAINTS: Final = (
    (re.compile(r"^Invalid value for VR (?P<vr>[A-Z]{2})\b"), "an invalid value for VR {vr}"),
    (
        re.compile(
            r"value length \((?P<n>\d+)\) exceeds the maximum length of (?P<max>\d+) "
            r"allowed for VR (?P<vr>[A-Z]{2})"
        ),
        "a value of {n} characters, over the {max} of VR {vr}",
    ),  # fmt: skip
    (re.compile(r"is not valid for elements with a VR of (?P<vr>[A-Z]{2})"), "an invalid {vr}"),
    (re.compile(r"^The (?P<what>PN component|number of PN components) length"), "a long {what}"),
    (
        re.compile(r"^A value of type '\w+' cannot be assigned to a tag with VR (?P<vr>[A-Z]{2})"),
        "a value of the wrong type for VR {vr}",
    ),  # fmt: skip
    (re.compile(r"^Non-conformant '(?P<what>[A-Za-z ]{1,60})' value"), "a non-conformant {what}"),
)
# A UID (PS3.5 9.1) or close to one; well-known ones (transfer syntaxes, SOP classes) stay.
_UID: Final = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w.])")
_QUOTED: Final = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_LONG_DIGITS: Final = re.compile(r"\d{6,}")
_NAME: Final = re.compile(r"\S*\^\S*")  # a Person Name's component separator
# "Affected SOP Instance UID     : 1.2.3" (pynetdicom's DIMSE dumps), "Patient ID: 123".
_LABELLED: Final = re.compile(
    r"(?P<label>\b(?:[\w-]+ )*?(?:Instance UID|Study UID|Series UID|Identifier|Patient(?:'s)? "
    r"(?:ID|Name|Birth Date)|Accession Number)s?\s*:)[ \t]*(?P<value>[^\n=][^\n]*)"
)
# "(0010,0010) PN [VANDERMEER^Cornelis]" and the like: a data set dump.
_ELEMENT_LINE: Final = re.compile(r"(?m)^(?P<head>\s*\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)\s+.*?)"
                                  r"(?P<value>\[.*\]|:.*)$")  # fmt: skip


def withhold_values(text: str) -> str:
    """``text`` with whatever may be a DICOM value replaced by :data:`WITHHELD`.

    Withheld: data set dump values, labelled identifiers and UIDs, quoted text, UIDs that
    are not well known, names (anything with a ``^``) and runs of six digits or more.
    """
    text = _ELEMENT_LINE.sub(lambda m: f"{m['head']}{WITHHELD}", text)
    text = _LABELLED.sub(lambda m: f"{m['label']} {WITHHELD}", text)
    text = _QUOTED.sub(lambda m: m[0] if _well_known(m[0][1:-1]) else WITHHELD, text)
    text = _UID.sub(lambda m: m[0] if _well_known(m[0]) else WITHHELD, text)
    text = _NAME.sub(WITHHELD, text)
    return _LONG_DIGITS.sub(WITHHELD, text)


def _well_known(uid: str) -> bool:
    # pydicom's dictionary of the standard's UIDs; pydicom.uid.UID would validate (and warn).
    from pydicom._uid_dict import UID_dictionary

    return uid in UID_dictionary


def _complaint(message: str) -> str | None:
    """What a validator complains about, in words of its own, or None if it is no complaint."""
    for pattern, template in _COMPLAINTS:
        found = pattern.search(message)
        if found:
            return template.format(**found.groupdict())
    return None


def _element_on_stack(frame: FrameType | None) -> str | None:
    """'(gggg,eeee) Keyword' of the element pydicom is validating, from its frames' locals.

    A :class:`pydicom.dataelem.DataElement` being set (``self``) or a raw element being
    converted on first access (``raw``, a ``RawDataElement``).
    """
    from pydicom.datadict import keyword_for_tag
    from pydicom.tag import Tag

    for _ in range(_STACK_DEPTH):
        if frame is None:
            return None
        for name, kind in (("self", "DataElement"), ("raw", "RawDataElement")):
            candidate = frame.f_locals.get(name)
            if type(candidate).__name__ == kind and type(candidate).__module__.startswith(
                "pydicom"
            ):
                tag = Tag(getattr(candidate, "tag", 0))
                return f"{tag} {keyword_for_tag(tag)}".rstrip()
        frame = frame.f_back
    return None


def _describe(message: str) -> str:
    complaint = _complaint(message)
    if complaint is None:
        return withhold_values(message)
    element = _element_on_stack(sys._getframe(1))
    where = f" in {element}" if element else ""
    return f"{complaint}{where} (value withheld)"


def _traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the exceptions it chains, without their messages."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts = []
    for number, item in enumerate(reversed(chain)):
        if number:
            parts.append("\nwhich led to:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        parts.append(f"{kind.__module__}.{kind.__qualname__}: (message withheld)\n")
    return "".join(parts).rstrip("\n")


class WithholdDicomValues(logging.Filter):
    """Rewrite a record so that it carries no DICOM value (see the module's description)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):
            return True
        setattr(record, _MARK, True)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _traceback_without_messages(record.exc_info[1])
            record.exc_info = None
        library = record.name.partition(".")[0]
        if library in DICOM_LIBRARIES:
            # The name stays the library's: "pydicom: an invalid value ..." where shown.
            record.msg = _describe(record.getMessage())
            record.args = None
        return True


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """:func:`warnings.showwarning` for medai: through logging, without values."""
    parts = Path(filename).parts
    if "pydicom" in parts:
        return  # pydicom's warn_and_log() logged it to the "pydicom" logger already
    text = str(message)
    library = next((part for part in parts if part in DICOM_LIBRARIES), None)
    shown = f"{library}: {_describe(text)}" if library else withhold_values(text)
    logging.getLogger("py.warnings").warning(
        "%s: %s (%s:%d)", category.__name__, shown, Path(filename).name, lineno
    )


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Put :class:`WithholdDicomValues` on ``handlers`` (default: the root logger's).

    Also routes :mod:`warnings` through logging without values. Safe to call again.
    """
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, WithholdDicomValues) for f in handler.filters):
            handler.addFilter(WithholdDicomValues())
    warnings.showwarning = _show_warning


def configure_worker(level: str | int) -> None:
    """Logging of a worker process: the parent's handlers if forked, else a plain one.

    A spawned process starts without handlers: Python's last-resort handler and the
    default :func:`warnings.showwarning` would print values unfiltered.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(name)s: %(message)s")
    install()


def with_withheld_values(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a :func:`logging.config.dictConfig` dictionary whose handlers withhold values.

    For uvicorn's ``log_config``: its handlers, not the root's, write the server's records.
    """
    config = copy.deepcopy(config)
    config.setdefault("filters", {})["withhold_dicom_values"] = {
        "()": f"{__name__}.WithholdDicomValues"
    }
    for handler in config.get("handlers", {}).values():
        handler.setdefault("filters", []).append("withhold_dicom_values")
    return config
