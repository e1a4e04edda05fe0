"""Reconciliation: the edge's receipts against what the centre holds, day by day.

Both sides account for a site per receipt day (the UTC date the edge received an instance)
with a count and :func:`~medai.collection.edge_receipts.receipt_hash` over the sorted
pseudonymized SOP Instance UIDs: the edge from its outbox, the centre from its
``edge_receipts`` rows (``GET /v1/edge/receipts``). Days whose count or hash differ are then
compared UID by UID (the centre lists a day's UIDs on request), naming what is missing at the
centre (with the edge's view of why: not sent yet, or quarantined centrally) and what the
centre holds that the edge does not. Zero differences once the outbox is empty and all arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medai.errors import EdgeError

if TYPE_CHECKING:
    import httpx

    from medai.edge.outbox import Outbox

__all__ = ["DayDifference", "Reconciliation", "reconcile"]


@dataclass(frozen=True)
class DayDifference:
    """One receipt day on which the edge and the centre disagree."""

    day: str
    edge_count: int
    centre_count: int
    missing_at_centre: list[str]
    missing_at_edge: list[str]
    # For UIDs missing at the centre: "unsent", or the centre's answer ("failed:<reason>").
    edge_state: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reconciliation:
    """The comparison of one site's receipts."""

    site: str
    days: int
    edge_instances: int
    centre_instances: int
    outbox_depth: int
    differences: list[DayDifference]

    @property
    def difference_count(self) -> int:
        """Instances missing on either side, over all days."""
        return sum(len(d.missing_at_centre) + len(d.missing_at_edge) for d in self.differences)


def _get(client: httpx.Client, params: dict[str, str]) -> dict[str, Any]:
    import httpx

    try:
        response = client.get("/v1/edge/receipts", params=params)
    except httpx.HTTPError as exc:
        raise EdgeError(
            f"the centre cannot be reached ({exc.__class__.__name__}); try again later"
        ) from None
    if response.status_code in (401, 403):
        raise EdgeError(
            f"the centre refused this edge's key for site {params['site']!r} "
            f"(HTTP {response.status_code}); ask the centre for a new site kit"
        )
    if response.status_code != 200:
        raise EdgeError(f"the centre answered HTTP {response.status_code} for its receipts")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("receipts"), dict):
        raise EdgeError("the centre's receipts are not in the expected form")
    return body


def reconcile(outbox: Outbox, client: httpx.Client, site: str) -> Reconciliation:
    """Compare ``outbox``'s receipts with the centre's for ``site``.

    Raises
    ------
    EdgeError
        If the centre cannot be reached or refuses the key.
    """
    ours = outbox.receipts()
    theirs: dict[str, Any] = _get(client, {"site": site})["receipts"]
    differences: list[DayDifference] = []
    for day in sorted(set(ours) | set(theirs)):
        mine = ours.get(day, {"count": 0, "hash": None})
        other = theirs.get(day) or {"count": 0, "hash": None}
        if mine["count"] == other.get("count") and mine["hash"] == other.get("hash"):
            continue
        centre_uids: set[str] = set()
        if day in theirs:
            listed = _get(client, {"site": site, "day": day}).get("sop_instance_uids") or []
            centre_uids = {str(u) for u in listed}
        edge_uids = set(outbox.day_uids(day))
        missing_centre = sorted(edge_uids - centre_uids)
        states = {
            uid: outcome or "unsent" for uid, outcome in outbox.outcomes(missing_centre).items()
        }
        differences.append(
            DayDifference(
                day=day,
                edge_count=int(mine["count"]),
                centre_count=int(other.get("count") or 0),
                missing_at_centre=missing_centre,
                missing_at_edge=sorted(centre_uids - edge_uids),
                edge_state=states,
            )
        )
    return Reconciliation(
        site=site,
        days=len(set(ours) | set(theirs)),
        edge_instances=sum(int(v["count"]) for v in ours.values()),
        centre_instances=sum(int((v or {}).get("count") or 0) for v in theirs.values()),
        outbox_depth=outbox.stats().depth,
        differences=differences,
    )
