"""Patient-level, stratified train/val/test splits, and the fractions they follow.

The split unit is a group of linked patients: patients who share an image (the same pixels,
re-sent under another MRN) are one person as far as leakage goes, so they share a split.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from medai.errors import SnapshotError

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "assign_splits",
    "check_fractions",
    "merge_resends",
    "parse_fractions",
    "patient_strata",
]

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.7,0.15,0.15"`` into train/val/test fractions that sum to 1.

    Raises
    ------
    SnapshotError
        Unless there are three non-negative numbers summing to 1 with a positive train.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise SnapshotError(
            f"invalid split {text!r}: give three fractions train,val,test, e.g. 0.7,0.15,0.15"
        )
    return check_fractions((values[0], values[1], values[2]))


def check_fractions(values: Sequence[float]) -> tuple[float, float, float]:
    """``values`` as train/val/test fractions, else raise :class:`SnapshotError`."""
    if len(values) != 3 or any(not v >= 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise SnapshotError(
            f"invalid split {','.join(map(str, values))}: three non-negative fractions "
            "(train,val,test) must sum to 1"
        )
    if values[0] <= 0:
        raise SnapshotError("invalid split: the train fraction must be above 0")
    return (float(values[0]), float(values[1]), float(values[2]))


def assign_splits(
    patients: Mapping[str, tuple[str, tuple[str, ...]]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign each patient to ``train``, ``val`` or ``test``, stratified by site and labels.

    Linked patients (``groups``) are assigned as one unit, with the first site and all the
    positive findings of its members; without links each patient is its own unit.

    Patients are grouped into strata by their key (site, sorted positive findings). The
    strata are visited in a seeded random order and each stratum's patients in a seeded
    random order; each patient goes to the split with the largest deficit, where the
    deficit of split *i* after *k* patients is ``fraction_i * (k + 1) - count_i``, summed
    over the patient's stratum and over all patients so far. The stratum term spreads
    every stratum with enough patients across the splits in proportion; the global term
    keeps the overall fractions right when there are many small strata. Ties go to the
    earlier split (train first).

    Parameters
    ----------
    patients
        ``{patient pseudonym: (site, positive findings)}``.
    fractions
        Train, val and test fractions (summing to 1).
    seed
        The shuffle's seed: the same input and seed always give the same assignment.
    groups
        ``{patient: its group's name}`` for linked patients (see :func:`merge_resends`);
        a patient not in it is a group of its own.

    Returns
    -------
    dict
        ``{patient pseudonym: split}``.
    """
    fractions = check_fractions(fractions)
    units: dict[str, tuple[str, tuple[str, ...]]] = {}
    members_of: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(patients):
        unit = (groups or {}).get(patient, patient)
        members_of[unit].append(patient)
        site, positives = patients[patient]
        if unit in units:
            known_site, known = units[unit]
            site, positives = min(site, known_site), (*known, *positives)
        units[unit] = (site, tuple(sorted(set(positives))))
    strata: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for unit in sorted(units):
        strata[units[unit]].append(unit)
    rng = random.Random(seed)
    order = sorted(strata)
    rng.shuffle(order)
    total = [0, 0, 0]
    assigned = 0
    result: dict[str, str] = {}
    for key in order:
        members = strata[key]
        rng.shuffle(members)
        local = [0, 0, 0]
        for k, patient in enumerate(members):
            scores = [
                (fractions[i] * (k + 1) - local[i]) + (fractions[i] * (assigned + 1) - total[i])
                for i in range(3)
            ]
            best = max(range(3), key=lambda i: (scores[i], -i) if fractions[i] > 0 else (-1e9, 0))
            local[best] += 1
            total[best] += 1
            assigned += 1
            for member in members_of[patient]:
                result[member] = SPLITS[best]
    return result


def merge_resends(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Keep each image once and link the patients who share one.

    Rows carry ``instance_id`` and ``pixel_hash`` (None when the pixels were not hashed).
    Of the rows with the same hash, the first catalogued (lowest id) is kept; its patient
    and those of the dropped re-sends are linked (union-find), so they share a split.

    Returns
    -------
    tuple
        The kept rows (in their order) and ``{patient: group name}`` for every linked
        patient; a group is named after its first member in sort order.
    """
    parent: dict[str, str] = {}

    def find(patient: str) -> str:
        parent.setdefault(patient, patient)
        while parent[patient] != patient:
            parent[patient] = parent[parent[patient]]  # path halving
            patient = parent[patient]
        return patient

    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        digest = row.get("pixel_hash")
        if digest is None:
            continue
        seen = first.get(digest)
        if seen is None or row["instance_id"] < seen["instance_id"]:
            first[digest] = row
        if seen is not None:
            a, b = find(seen["patient"]), find(row["patient"])
            if a != b:
                parent[max(a, b)] = min(a, b)
    kept = [row for row in rows if row.get("pixel_hash") is None or first[row["pixel_hash"]] is row]
    roots = {patient: find(patient) for patient in parent}
    sizes = Counter(roots.values())
    return kept, {patient: root for patient, root in roots.items() if sizes[root] > 1}


def patient_strata(
    rows: Sequence[Mapping[str, Any]], findings: Sequence[str]
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{patient: (site, positive findings)}``; a patient seen at several sites takes the
    first site id in sort order."""
    sites: dict[str, set[str]] = defaultdict(set)
    positives: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sites[row["patient"]].add(row["site"])
        positives[row["patient"]].update(f for f in findings if row[f] == 1)
    return {p: (min(sites[p]), tuple(sorted(positives[p]))) for p in sites}
