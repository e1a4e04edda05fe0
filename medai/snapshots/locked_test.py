"""The locked test set of a snapshot, and what it shares with the earlier snapshot of that set.

Splits are keyed per patient (:mod:`medai.snapshots.splits`), so every snapshot made with the
same seed and test fraction draws its test patients from one locked test set, named by
:func:`~medai.snapshots.splits.locked_test_set_id`. A new snapshot records that id, how many test
patients it has and their hash, and, against the latest earlier snapshot of the same set:
how many of that snapshot's test patients it holds, how many of them are still in test,
and how many moved (only a re-send linking them to a patient of another split can move
one). A candidate and the champion can then be compared on the same test cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.catalog.models import Snapshot
from medai.errors import SnapshotTampered
from medai.snapshots.manifest import read_verified
from medai.snapshots.splits import locked_test_set_id, patient_set_hash

__all__ = ["describe_test_set", "patients_in_test"]


def patients_in_test(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """The pseudonyms of the patients in the ``test`` split of manifest ``rows``."""
    return {str(row["patient"]) for row in rows if row["split"] == "test"}


def _earlier_splits(earlier: Snapshot, home: Path) -> dict[str, str] | None:
    """``{patient: split}`` of an earlier snapshot's manifest; None when it cannot be read."""
    try:
        _, table = read_verified(earlier.name, home / earlier.manifest_path, earlier.content_hash)
    except SnapshotTampered:
        return None
    columns = table.select(["patient", "split"]).to_pydict()
    return dict(zip(columns["patient"], columns["split"], strict=True))


def describe_test_set(
    session: Session,
    home: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    seed: int,
    test_fraction: float,
) -> dict[str, Any]:
    """The ``test_set`` record of a snapshot about to be created from ``rows``.

    Parameters
    ----------
    session
        The snapshot's catalog transaction (to find the earlier snapshots).
    home
        The medai home (where the earlier manifests lie).
    rows
        The new manifest's rows, with ``patient`` and ``split``.
    seed, test_fraction
        What the split was keyed and cut with.

    Returns
    -------
    dict
        ``id``, ``test_fraction``, ``patients`` (test patients), ``patients_sha256``, and
        ``earlier``: None when no earlier snapshot has this test set, else ``snapshot``,
        ``test_patients`` (its count), ``present`` (of them, in this snapshot), ``still_test``
        and ``moved`` (present but in another split now), or ``unreadable: true`` when its
        manifest fails its hash check.
    """
    ident = locked_test_set_id(seed, test_fraction)
    mine = patients_in_test(rows)
    record: dict[str, Any] = {
        "id": ident,
        "test_fraction": float(test_fraction),
        "patients": len(mine),
        "patients_sha256": patient_set_hash(mine),
        "earlier": None,
    }
    candidates = session.scalars(
        select(Snapshot)
        .where(Snapshot.test_set.is_not(None))
        .order_by(Snapshot.created_at.desc(), Snapshot.id.desc())
    )
    # JSON columns are not comparable the same way on SQLite and PostgreSQL: filter here.
    earlier = next((s for s in candidates if (s.test_set or {}).get("id") == ident), None)
    if earlier is None:
        return record
    splits = _earlier_splits(earlier, home)
    if splits is None:
        record["earlier"] = {"snapshot": earlier.name, "unreadable": True}
        return record
    before = {patient for patient, split in splits.items() if split == "test"}
    now = {str(row["patient"]): str(row["split"]) for row in rows}
    present = before & now.keys()
    still = {patient for patient in present if now[patient] == "test"}
    record["earlier"] = {
        "snapshot": earlier.name,
        "test_patients": len(before),
        "present": len(present),
        "still_test": len(still),
        "moved": len(present - still),
    }
    return record
