"""Patient-level train/val/test splits that stay put as data grows, and their fractions.

A patient's split is a keyed function of the patient alone: the HMAC-SHA256 of its
pseudonym under the split key (derived from the snapshot seed), read as a number in
[0, 1) and cut at the fractions, test first (``[0, test)``), then validation, then
training. Adding studies or patients never moves a patient already assigned, and the test
set depends only on the seed and the test fraction (:func:`locked_test_set_id`): every snapshot
with the same seed and test fraction shares one locked test set. Pseudonyms are already
keyed hashes under the campaign key, so positions cannot be steered without that key.

The split unit is a group of linked patients: patients who share an image (the same pixels,
re-sent under another MRN) are one person as far as leakage goes, so they share a split,
the split of the group's first pseudonym in sort order. That is the one way a patient can
move: a later re-send that links it to a patient of another split.

Splits are not stratified: stratification depends on who else is in the snapshot, which
would move patients as data arrives. Over many patients each site and finding falls into the
splits close to the fractions (binomially); a small snapshot may miss a class in a split.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medai.errors import SnapshotError

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "assign_splits",
    "check_fractions",
    "merge_resends",
    "parse_fractions",
    "patient_set_hash",
    "split_position",
    "locked_test_set_id",
]

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# Part of every position: a change of the derivation must change the test set's id too.
_SPLIT_LABEL = "medai/split/v1"


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


def _split_key(seed: int) -> bytes:
    return hashlib.sha256(f"{_SPLIT_LABEL}/key/{seed}".encode()).digest()


def split_position(unit: str, seed: int = 0) -> float:
    """Where the split unit ``unit`` (a pseudonym) falls in [0, 1) under the key of ``seed``."""
    mac = hmac.new(_split_key(seed), unit.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") / 2**64


def locked_test_set_id(seed: int, test_fraction: float) -> str:
    """The locked test set's id: every snapshot with this seed and test fraction shares it.

    A short sha256 of the derivation, the seed and the test fraction (rounded to 1e-9,
    so ``0.15`` written two ways is one set).
    """
    text = f"{_SPLIT_LABEL}/test/{seed}/{round(float(test_fraction), 9)!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def patient_set_hash(patients: Iterable[str]) -> str:
    """The sha256 of a set of pseudonyms (sorted, one per line): a set named without listing it."""
    text = "".join(f"{patient}\n" for patient in sorted(set(patients)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def assign_splits(
    patients: Iterable[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign each patient to ``train``, ``val`` or ``test`` by its keyed position.

    Linked patients (``groups``) take the split of their group's name (its first member
    in sort order); without links each patient is its own unit. A patient's split depends
    only on its unit, the seed and the fractions, never on the other patients.

    Parameters
    ----------
    patients
        Patient pseudonyms (a mapping contributes its keys).
    fractions
        Train, val and test fractions (summing to 1).
    seed
        The split key's seed: the same unit and seed always give the same position.
    groups
        ``{patient: its group's name}`` for linked patients (see :func:`merge_resends`);
        a patient not in it is a group of its own.

    Returns
    -------
    dict
        ``{patient pseudonym: split}``.
    """
    train, val, test = check_fractions(fractions)
    result: dict[str, str] = {}
    for patient in patients:
        position = split_position((groups or {}).get(patient, patient), seed)
        # Test first: its membership depends on the test fraction alone, so a change of
        # the train/val balance never touches the locked test set.
        if position < test:
            result[patient] = "test"
        elif position < test + val:
            result[patient] = "val"
        else:
            result[patient] = "train"
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
