"""Which stored objects a WADO-RS retrieve sends: a study's, a series' or one instance's.

One indexed query over the catalog; the bytes stay in the object store until they are
streamed (:mod:`medai.serving.dicomweb_retrieve`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.catalog.models import Instance, Series, Study
from medai.errors import DicomwebNotFound

__all__ = ["StoredInstance", "locate_instances"]


@dataclass(frozen=True)
class StoredInstance:
    """A catalogued instance and its object in the store."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    store_key: str
    byte_size: int


def locate_instances(
    session: Session,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[StoredInstance]:
    """The instances of a study (or of one of its series, or one instance), in catalog order.

    Raises
    ------
    DicomwebNotFound
        Nothing matches (the study, series or instance is not in the collection).
    """
    statement = (
        select(
            Study.study_uid,
            Series.series_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.number_of_frames,
            Instance.store_key,
            Instance.byte_size,
        )
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_number, Series.id, Instance.id)
    )
    if series_uid is not None:
        statement = statement.where(Series.series_uid == series_uid)
    if sop_instance_uid is not None:
        statement = statement.where(Instance.sop_instance_uid == sop_instance_uid)
    found = [StoredInstance(*row) for row in session.execute(statement)]
    if not found:
        what = (
            "instance"
            if sop_instance_uid is not None
            else ("series" if series_uid is not None else "study")
        )
        raise DicomwebNotFound(
            f"no such {what} in the collection: search for it first (QIDO-RS) and check the UIDs"
        )
    return found
