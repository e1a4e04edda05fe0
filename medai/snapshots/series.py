"""Series-level snapshot rows: the instances of each series assembled into one volume row.

A series snapshot reads every selected instance's de-identified header from the store
(pixels are not parsed) and hands each series to :func:`medai.dicom.series_geometry.
assemble_series`. A series that makes a volume becomes one row: the base columns of its first
slice, ``store_keys`` (every store key in slice order, joined by ``"\\n"``), ``slices`` and
``spacing_mm`` (``"z,y,x"``). A series that does not is left out and listed with its reason.

Re-sent images (the catalog's keyed pixel hash) are handled per series: a series whose every
slice is a re-send of slices of another series is listed once, under the first arrival, and
the patients who share an image share a split (:func:`medai.snapshots.splits.merge_resends`).
Two slices of one series at one position with the same pixel hash are one slice.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from medai.dicom.series_geometry import assemble_series
from medai.errors import SeriesRefused
from medai.snapshots.splits import merge_resends
from medai.store import ObjectStore

__all__ = ["format_spacing", "read_headers", "series_rows"]

Progress = Callable[[int, int], None]


def read_headers(
    store: ObjectStore,
    keys: Iterable[str],
    *,
    known: Mapping[str, Dataset] | None = None,
    progress: Progress | None = None,
) -> dict[str, Dataset]:
    """Each store key's data set without its pixels (``known`` ones are not read again).

    The object is hash-checked as it is read (:meth:`ObjectStore.read`): a corrupt file
    stops the snapshot (:class:`~medai.errors.StoreCorrupt`) instead of ordering garbage.
    """
    wanted = sorted(set(keys))
    headers = {key: known[key] for key in wanted if known and key in known}
    todo = [key for key in wanted if key not in headers]
    for done, key in enumerate(todo, start=1):
        data = store.read(key, verify=True)
        headers[key] = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        if progress is not None:
            progress(done, len(todo))
    return headers


def format_spacing(spacing: Sequence[float]) -> str:
    """``(z, y, x)`` mm as the manifest's ``"z,y,x"`` text (4 decimals at most)."""
    return ",".join(f"{round(float(v), 4):g}" for v in spacing)


def _series_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (row["patient"], row["study_uid"], row["series_uid"])


def series_rows(
    rows: Sequence[dict[str, Any]], headers: Mapping[str, Dataset]
) -> tuple[list[dict[str, Any]], list[dict[str, str]], dict[str, str]]:
    """Instance rows (sorted as :func:`~medai.snapshots.query.collect_rows` sorts them) to
    one row per series.

    Returns
    -------
    tuple
        The series rows (in series order), the refused series (``{"series_uid",
        "reason", "message"}``, reason being a :class:`~medai.errors.SeriesRefused` code),
        and ``{patient: group name}`` of patients linked by a shared image.
    """
    kept, linked = merge_resends(rows)
    owner = {row["pixel_hash"]: _series_key(row) for row in kept if row.get("pixel_hash")}
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault(_series_key(row), []).append(row)
    result: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    for key, members in series.items():
        hashes = [member.get("pixel_hash") for member in members]
        if all(h is not None and owner.get(h) != key for h in hashes):
            continue  # every slice re-sent from another series: listed there
        try:
            geometry = assemble_series(
                [headers[member["store_key"]] for member in members], pixel_hashes=hashes
            )
        except SeriesRefused as exc:
            refused.append({"series_uid": key[2], "reason": exc.reason_code, "message": str(exc)})
            continue
        # A multi-frame instance's order indexes its frames: its one row is the series.
        ordered = members if geometry.multiframe else [members[i] for i in geometry.order]
        row = dict(ordered[0])
        row["store_keys"] = "\n".join(member["store_key"] for member in ordered)
        row["slices"] = geometry.slices
        row["spacing_mm"] = format_spacing(geometry.spacing_mm)
        result.append(row)
    return result, refused, linked
