"""QIDO-RS query parameters (PS3.18 10.6.1): what a search asks, checked and parsed.

Only what the catalog holds can be searched, and it holds de-identified values only:
pseudonymized UIDs, the patient's pseudonym (as PatientID), the shifted study date,
modalities, series numbers, SOP classes and image sizes. Attributes that de-identification
removes (PatientName, AccessionNumber, descriptions...) are known but never kept: a search
for a non-empty value of one matches nothing (nothing in the collection has one), and the
caller is told so (:attr:`QidoQuery.never_kept`). An attribute that is not a DICOM keyword
or tag, or a value of the wrong form, is refused with :class:`~medai.errors.DicomwebQueryError`.
The search itself is :func:`medai.catalog.qido.search`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from medai.errors import DicomwebQueryError

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "RETURNED",
    "Level",
    "QidoQuery",
    "parse_query",
]

Level = Literal["study", "series", "instance"]
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
# Deep offsets are still index scans, but each page costs its offset: cap it.
MAX_OFFSET: Final = 1_000_000

# The attributes the catalog can match on, per level, with the level that holds them.
_STUDY_KEYS: Final = ("StudyInstanceUID", "PatientID", "StudyDate", "ModalitiesInStudy")
_SERIES_KEYS: Final = ("SeriesInstanceUID", "Modality", "SeriesNumber")
_INSTANCE_KEYS: Final = ("SOPInstanceUID", "SOPClassUID")
_MATCHABLE: Final[Mapping[Level, tuple[str, ...]]] = {
    "study": _STUDY_KEYS,
    "series": _STUDY_KEYS + _SERIES_KEYS,
    "instance": _STUDY_KEYS + _SERIES_KEYS + _INSTANCE_KEYS,
}
# Returned attributes per level (PS3.18 table 10.6.3-3..5, those the catalog holds).
RETURNED: Final[Mapping[Level, tuple[str, ...]]] = {
    "study": (
        "StudyInstanceUID",
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ),
    "instance": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
        "Rows",
        "Columns",
        "NumberOfFrames",
    ),
}
# Study attributes a series or instance search may add with includefield.
_INCLUDABLE_UP: Final = ("PatientID", "StudyDate")
# Non-matching query parameters of PS3.18 10.6.1.2.
_CONTROL: Final = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"[0-9]{8}")
_MAX_VALUE = 256


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO-RS search.

    ``uids``: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID -> allowed
    values (UID list matching); ``patient_id``: a pattern with ``*``/``?`` wildcards;
    ``date_from``/``date_to``: a StudyDate range (either may be open); ``modalities``:
    ModalitiesInStudy (study) or Modality (series, instance); ``never_kept``: attributes
    asked for with a value the collection cannot hold (the search matches nothing).
    """

    level: Level
    uids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    patient_id: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    study_modalities: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    series_number: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    include: frozenset[str] = frozenset()
    never_kept: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def matches_nothing(self) -> bool:
        return bool(self.never_kept)


def _keyword(name: str) -> str:
    """The DICOM keyword a query parameter names (a keyword or 8 hex digits); 400 otherwise."""
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
        raise DicomwebQueryError(f"{name} is not a DICOM attribute medai knows")
    if tag_for_keyword(name) is None:
        raise DicomwebQueryError(
            f"{name[:64]!r} is not a DICOM attribute keyword or tag (e.g. StudyDate or 00080020)"
        )
    return name


def _uid_list(keyword: str, value: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
    for uid in values:
        if len(uid) > 64 or not _UID.fullmatch(uid):
            raise DicomwebQueryError(f"{keyword} must be a UID or a list of UIDs (1.2.3,4.5.6)")
    return values


def _date(value: str) -> dt.date:
    if not _DATE.fullmatch(value):
        raise DicomwebQueryError("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise DicomwebQueryError(f"StudyDate {value} is not a calendar date") from None


def _date_range(value: str) -> tuple[dt.date | None, dt.date | None]:
    if "-" not in value:
        day = _date(value)
        return day, day
    start, _, end = value.partition("-")
    if not start and not end:
        raise DicomwebQueryError("a StudyDate range needs at least one end (YYYYMMDD-)")
    first, last = (_date(start) if start else None), (_date(end) if end else None)
    if first and last and first > last:
        raise DicomwebQueryError("the StudyDate range ends before it starts")
    return first, last


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DicomwebQueryError(f"{name} must be a whole number") from None
    if not low <= number <= high:
        raise DicomwebQueryError(f"{name} must be between {low} and {high}")
    return number


def _codes(keyword: str, value: str) -> tuple[str, ...]:
    codes = tuple(v.strip().upper() for v in re.split(r"[,\\]", value) if v.strip())
    if any(not re.fullmatch(r"[A-Z0-9_ ]{1,16}", code) for code in codes):
        raise DicomwebQueryError(f"{keyword} must be modality codes such as CT, CR, DX")
    return codes


def _includes(values: Iterable[str]) -> tuple[frozenset[str], bool]:
    """The keywords named by ``includefield`` values, and whether ``all`` was asked."""
    named: set[str] = set()
    everything = False
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                everything = True
            else:
                named.add(_keyword(name))
    return frozenset(named), everything


def parse_query(
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    fixed: Mapping[str, str] | None = None,
) -> QidoQuery:
    """Parse a QIDO-RS query string (its ``(name, value)`` pairs) for a search at ``level``.

    ``fixed`` holds the UIDs of the URL's path (``/studies/{uid}/series``); a query
    parameter may not contradict them.

    Raises
    ------
    DicomwebQueryError
        An unknown attribute, a malformed value, an attribute given twice, a bad
        ``limit``/``offset``.
    """
    uids: dict[str, tuple[str, ...]] = {}
    values: dict[str, str] = {}
    include_values: list[str] = []
    limit, offset = DEFAULT_LIMIT, 0
    never_kept: list[str] = []
    ignored: list[str] = []
    for name, raw in params:
        value = raw.strip()
        if len(value) > _MAX_VALUE * 64:
            raise DicomwebQueryError(f"the value of {name[:64]} is too long")
        if name in _CONTROL:
            if name == "limit":
                limit = _int("limit", value, 1, MAX_LIMIT)
            elif name == "offset":
                offset = _int("offset", value, 0, MAX_OFFSET)
            elif name == "includefield":
                include_values.append(value)
            elif value.lower() not in ("true", "false"):
                raise DicomwebQueryError("fuzzymatching must be true or false")
            else:
                ignored.append(name)  # names are not kept: there is nothing to match fuzzily
            continue
        keyword = _keyword(name)
        if keyword in values:
            raise DicomwebQueryError(f"{keyword} is given twice: give it once (a list: a,b)")
        if keyword not in _MATCHABLE[level]:
            if keyword in _MATCHABLE["instance"]:
                raise DicomwebQueryError(
                    f"{keyword} cannot be matched in a {level} search: search "
                    f"{'series' if keyword in _SERIES_KEYS else 'instances'} instead"
                )
            if value and value not in ("*",):
                never_kept.append(keyword)  # removed by de-identification: nothing matches
            else:
                ignored.append(keyword)
            continue
        values[keyword] = value
    for keyword, uid in (fixed or {}).items():
        if keyword in values and set(_uid_list(keyword, values[keyword])) != {uid}:
            raise DicomwebQueryError(f"{keyword} in the query contradicts the one in the URL")
        values[keyword] = uid

    date_from = date_to = None
    patient_id = None
    study_modalities: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    series_number = None
    for keyword, value in values.items():
        if not value:
            continue  # universal matching
        if keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            uids[keyword] = _uid_list(keyword, value)
        elif keyword == "PatientID":
            if len(value) > 64:
                raise DicomwebQueryError("PatientID is at most 64 characters")
            if any((ord(char) < 0x20 and char != "\x1b") or char in "\\\x7f" for char in value):
                # A Long String holds no control character or backslash (PS3.5 6.2); a NUL
                # would also be refused by PostgreSQL, as a server error.
                raise DicomwebQueryError(
                    "PatientID holds a control character or a backslash, which a patient "
                    "ID (a DICOM Long String) cannot contain"
                )
            patient_id = None if set(value) == {"*"} else value
        elif keyword == "StudyDate":
            date_from, date_to = _date_range(value)
        elif keyword == "ModalitiesInStudy":
            study_modalities = _codes(keyword, value)
        elif keyword == "Modality":
            modalities = _codes(keyword, value)
        elif keyword == "SeriesNumber":
            series_number = _int("SeriesNumber", value, -(2**31), 2**31 - 1)
    named, everything = _includes(include_values)
    include = RETURNED[level] + (_INCLUDABLE_UP if level != "study" else ())
    chosen = frozenset(include) if everything else frozenset(k for k in named if k in include)
    return QidoQuery(
        level=level,
        uids=uids,
        patient_id=patient_id,
        date_from=date_from,
        date_to=date_to,
        study_modalities=study_modalities,
        modalities=modalities,
        series_number=series_number,
        limit=limit,
        offset=offset,
        include=chosen,
        never_kept=tuple(never_kept),
        ignored=tuple(ignored),
    )
