"""QIDO-RS searches over the catalog (PS3.18 10.6): studies, series and instances.

A parsed query (:func:`medai.catalog.qido_query.parse_query`) is matched on the catalog's
de-identified columns and answered as DICOM JSON (PS3.18 F.2), one page at a time.

Results come in the order of the rows' primary keys, which only grow: paging with
``limit``/``offset`` is stable while the collection grows (new rows land on later pages).
A page's keys are read first from the one table's indexes (a deep offset walks the primary
key index, no join), one more than asked to tell whether a further page exists; then the
page's own rows, and counts and modalities for that page only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from medai.catalog.models import Instance, Patient, Series, Study
from medai.catalog.qido_query import RETURNED, Level, QidoQuery, parse_query

__all__ = ["Level", "QidoPage", "QidoQuery", "parse_query", "search"]


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _study_filters(query: QidoQuery) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if "StudyInstanceUID" in query.uids:
        filters.append(Study.study_uid.in_(query.uids["StudyInstanceUID"]))
    if query.patient_id is not None:
        pid = query.patient_id
        patients = select(Patient.id)
        if "*" in pid or "?" in pid:
            patients = patients.where(Patient.pseudonym.like(_like(pid), escape="\\"))
        else:
            patients = patients.where(Patient.pseudonym == pid)
        filters.append(Study.patient_id.in_(patients.scalar_subquery()))
    if query.date_from is not None:
        filters.append(Study.study_date >= query.date_from)
    if query.date_to is not None:
        filters.append(Study.study_date <= query.date_to)
    if query.study_modalities:
        filters.append(
            exists().where(
                and_(Series.study_id == Study.id, Series.modality.in_(query.study_modalities))
            )
        )
    return filters


def _series_filters(query: QidoQuery) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if "SeriesInstanceUID" in query.uids:
        filters.append(Series.series_uid.in_(query.uids["SeriesInstanceUID"]))
    if query.modalities:
        filters.append(Series.modality.in_(query.modalities))
    if query.series_number is not None:
        filters.append(Series.series_number == query.series_number)
    return filters


def _instance_filters(query: QidoQuery) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if "SOPInstanceUID" in query.uids:
        filters.append(Instance.sop_instance_uid.in_(query.uids["SOPInstanceUID"]))
    if "SOPClassUID" in query.uids:
        filters.append(Instance.sop_class_uid.in_(query.uids["SOPClassUID"]))
    return filters


def _element(keyword: str, value: object) -> dict[str, Any]:
    vr = dictionary_VR(keyword)
    if value is None or value == () or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if isinstance(value, tuple):
        return {"vr": vr, "Value": list(value)}
    return {"vr": vr, "Value": [value]}


def _dataset(values: Mapping[str, object], keep: Iterable[str]) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of ``values``, tags in ascending order."""
    wanted = [k for k in keep if k in values]
    return {
        f"{tag_for_keyword(k):08X}": _element(k, values[k])
        for k in sorted(wanted, key=lambda k: tag_for_keyword(k) or 0)
    }


def _da(day: dt.date | None) -> str | None:
    return day.strftime("%Y%m%d") if day else None


@dataclass(frozen=True)
class QidoPage:
    """One page of matches (DICOM JSON datasets), and whether more follow it."""

    results: list[dict[str, Any]]
    more: bool


def search(session: Session, query: QidoQuery) -> QidoPage:
    """The DICOM JSON datasets of one page of ``query``'s matches, in catalog order.

    Each dataset holds the level's returned attributes (and those of ``include``), never a
    value the catalog does not hold. Counts and modalities are computed for the page only.
    """
    if query.matches_nothing:
        return QidoPage([], more=False)
    if query.level == "study":
        return _search_studies(session, query)
    if query.level == "series":
        return _search_series(session, query)
    return _search_instances(session, query)


def _page_keys(session: Session, keys: Select[int], query: QidoQuery) -> tuple[list[int], bool]:
    """The query's page of ``keys`` (a filtered select of one id column) in id order, and
    whether more follow.

    Each level takes its page's keys first, from its table and the filters' joins alone (a
    deep offset walks the primary key index, not the whole join), then the page's own rows.
    """
    key = keys.selected_columns[0]
    found = list(
        session.scalars(
            keys.order_by(key)
            .limit(query.limit + 1)  # one more: are there further pages?
            .offset(query.offset)
        )
    )
    return found[: query.limit], len(found) > query.limit


def _search_studies(session: Session, query: QidoQuery) -> QidoPage:
    page, more = _page_keys(session, select(Study.id).where(*_study_filters(query)), query)
    if not page:
        return QidoPage([], more=False)
    rows = session.execute(
        select(Study.id, Study.study_uid, Study.study_date, Patient.pseudonym)
        .join(Patient, Patient.id == Study.patient_id)
        .where(Study.id.in_(page))
        .order_by(Study.id)
    ).all()
    ids = [row.id for row in rows]
    modalities: dict[int, set[str]] = {}
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_(ids)).distinct()
    ):
        if modality:
            modalities.setdefault(study_id, set()).add(modality)
    counts = {
        study_id: (n_series, n_instances)
        for study_id, n_series, n_instances in session.execute(
            select(
                Series.study_id,
                func.count(func.distinct(Series.id)),
                func.count(Instance.id),
            )
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id.in_(ids))
            .group_by(Series.study_id)
        )
    }
    keep = RETURNED["study"]
    results = []
    for row in rows:
        n_series, n_instances = counts.get(row.id, (0, 0))
        values = {
            "StudyInstanceUID": row.study_uid,
            "PatientID": row.pseudonym,
            "StudyDate": _da(row.study_date),
            "ModalitiesInStudy": tuple(sorted(modalities.get(row.id, ()))),
            "NumberOfStudyRelatedSeries": n_series,
            "NumberOfStudyRelatedInstances": n_instances,
        }
        results.append(_dataset(values, keep))
    return QidoPage(results, more=more)


def _study_join_filters(query: QidoQuery) -> list[ColumnElement[bool]]:
    return _study_filters(query)


def _search_series(session: Session, query: QidoQuery) -> QidoPage:
    statement = (
        select(
            Series.id,
            Series.series_uid,
            Series.modality,
            Series.series_number,
            Series.body_part,
            Study.study_uid,
            Study.study_date,
            Patient.pseudonym,
        )
        .join(Study, Study.id == Series.study_id)
        .join(Patient, Patient.id == Study.patient_id)
    )
    page, more = _page_keys(
        session,
        select(Series.id)
        .join(Study, Study.id == Series.study_id)
        .where(*_study_join_filters(query), *_series_filters(query)),
        query,
    )
    if not page:
        return QidoPage([], more=False)
    rows = session.execute(statement.where(Series.id.in_(page)).order_by(Series.id)).all()
    counts = dict(
        session.execute(
            select(Instance.series_id, func.count(Instance.id))
            .where(Instance.series_id.in_([row.id for row in rows]))
            .group_by(Instance.series_id)
        ).all()
    )
    keep = RETURNED["series"] + tuple(query.include)
    results = [
        _dataset(
            {
                "StudyInstanceUID": row.study_uid,
                "SeriesInstanceUID": row.series_uid,
                "Modality": row.modality,
                "SeriesNumber": row.series_number,
                "BodyPartExamined": row.body_part,
                "NumberOfSeriesRelatedInstances": counts.get(row.id, 0),
                "PatientID": row.pseudonym,
                "StudyDate": _da(row.study_date),
            },
            keep,
        )
        for row in rows
    ]
    return QidoPage(results, more=more)


def _search_instances(session: Session, query: QidoQuery) -> QidoPage:
    statement = (
        select(
            Instance.id,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.modality,
            Instance.rows,
            Instance.columns,
            Instance.number_of_frames,
            Series.series_uid,
            Study.study_uid,
            Study.study_date,
            Patient.pseudonym,
        )
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .join(Patient, Patient.id == Study.patient_id)
    )
    page, more = _page_keys(
        session,
        select(Instance.id)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(*_study_join_filters(query), *_series_filters(query), *_instance_filters(query)),
        query,
    )
    if not page:
        return QidoPage([], more=False)
    rows = session.execute(statement.where(Instance.id.in_(page)).order_by(Instance.id)).all()
    keep = RETURNED["instance"] + tuple(query.include)
    results = [
        _dataset(
            {
                "StudyInstanceUID": row.study_uid,
                "SeriesInstanceUID": row.series_uid,
                "SOPInstanceUID": row.sop_instance_uid,
                "SOPClassUID": row.sop_class_uid,
                "Modality": row.modality,
                "Rows": row.rows,
                "Columns": row.columns,
                "NumberOfFrames": row.number_of_frames,
                "PatientID": row.pseudonym,
                "StudyDate": _da(row.study_date),
            },
            keep,
        )
        for row in rows
    ]
    return QidoPage(results, more=more)
