"""Hand-built arrivals for the KPI and status tests: studies, their instances and counters.

Each study is one patient, one series and one instance received on its campaign day at
12:00 UTC, with the progress counter the ingest pipeline would keep beside it, so both the
counters (progress) and ``instances.received_at`` (last seen) say when the site sent.
"""

from __future__ import annotations

import datetime as dt
import itertools

from sqlalchemy import insert
from sqlalchemy.orm import Session

from medai.catalog.models import Instance, Patient, ProgressCount, Series, SiteHeartbeat, Study

__all__ = ["add_heartbeat", "add_studies", "arrival_time"]

_NUMBERS = itertools.count(1)


def arrival_time(start: dt.date, day: int) -> dt.datetime:
    """12:00 UTC on campaign day ``day`` (1 = ``start``)."""
    return dt.datetime.combine(start + dt.timedelta(days=day - 1), dt.time(12), dt.UTC)


def add_studies(session: Session, site: str, start: dt.date, per_day: dict[int, int]) -> None:
    """``per_day[d]`` DX CHEST studies of ``site`` received on campaign day ``d``.

    Each study counts two instances and 1000 bytes in the counters (one instance row).
    """
    for day, count in per_day.items():
        when = arrival_time(start, day)
        for _ in range(count):
            number = next(_NUMBERS)
            patient = Patient(pseudonym=f"P{number:016d}")
            session.add(patient)
            session.flush()
            study = Study(
                study_uid=f"2.25.{number}",
                patient_id=patient.id,
                site_id=site,
                modality="DX",
                body_part="CHEST",
                first_received_at=when,
            )
            session.add(study)
            session.flush()
            series = Series(series_uid=f"2.25.{number}.1", study_id=study.id, modality="DX")
            session.add(series)
            session.flush()
            session.add(
                Instance(
                    sop_instance_uid=f"2.25.{number}.1.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                    series_id=series.id,
                    site_id=site,
                    modality="DX",
                    body_part="CHEST",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    store_key=f"{number:064x}",
                    byte_size=1000,
                    source="folder",
                    received_at=when,
                )
            )
        session.execute(
            insert(ProgressCount).values(
                site_id=site,
                day=when.date(),
                modality="DX",
                body_part="CHEST",
                studies=count,
                instances=count * 2,
                bytes=count * 1000,
            )
        )


def add_heartbeat(
    session: Session,
    site: str,
    when: dt.datetime,
    *,
    outbox_depth: int = 0,
    oldest_unsent_seconds: float | None = None,
) -> None:
    """The latest heartbeat of ``site``'s edge, as the centre records it."""
    session.add(
        SiteHeartbeat(
            site_id=site,
            received_at=when,
            edge_version="0.test",
            clock_skew_seconds=-1.5,
            outbox_depth=outbox_depth,
            oldest_unsent_seconds=oldest_unsent_seconds,
            received_today=12,
            forwarded_today=5,
            quarantined_today=1,
            receipts={},
        )
    )
