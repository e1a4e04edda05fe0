"""Refuse to train on a snapshot without labels for the configured findings.

A snapshot taken before the label sheets were imported (``--all-studies``) has ``<NA>`` in
every finding column; the masked loss would then be 0 on no labels at all and a model
would be registered that learned nothing. Training needs, for every configured finding,
known labels in the training split and in the test split (the gate is measured there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from medai.errors import UnlabelledSnapshot

__all__ = ["one_class_splits", "require_labels"]

_log = logging.getLogger(__name__)

# The splits a finding must be labelled in: without training labels nothing is learned,
# without test labels the gate has nothing to measure.
_NEEDED = ("train", "test")


def require_labels(manifest: Any, labels: Sequence[str], snapshot: str) -> None:
    """Raise :class:`UnlabelledSnapshot` unless each of ``labels`` is known in train and test.

    Parameters
    ----------
    manifest
        The snapshot's manifest (a pandas DataFrame with ``split`` and the finding columns).
    labels
        The configured findings (``[data] labels``).
    snapshot
        The snapshot's name, for the message.

    Raises
    ------
    UnlabelledSnapshot
        Naming each finding and the splits where it has no label, and what to do.
    """
    missing: dict[str, list[str]] = {}
    for label in labels:
        if label not in manifest.columns:
            continue  # not a finding of the snapshot at all: the reader's KeyError says so
        known = manifest[manifest[label].notna()]
        splits = [split for split in _NEEDED if not (known["split"] == split).any()]
        if splits:
            missing[label] = splits
    if not missing:
        return
    where = "; ".join(f"{label} (none in {', '.join(s)})" for label, s in missing.items())
    raise UnlabelledSnapshot(
        f"snapshot {snapshot!r} has no labels for the configured finding(s) {where}: "
        "import the sites' label sheets (`medai labels import SHEET --site SITE`), create a "
        "new snapshot (snapshots are immutable; the default --labelled-only takes labelled "
        "studies only) and point [data] snapshot at it, or remove the finding(s) from "
        "[data] labels"
    )


def one_class_splits(manifest: Any, labels: Sequence[str]) -> list[str]:
    """Warnings for each finding whose validation or test split holds one class only.

    Splits are a keyed function of the patient, not stratified by finding (stratifying would
    move patients between splits as data arrives), so a small snapshot can leave a split
    without a positive or a negative study: its threshold (validation) or AUROC (test) is then
    undefined. Training goes on, the gate then refuses; the warning says why early. Each
    message is also logged.
    """
    found: list[str] = []
    for label in labels:
        if label not in manifest.columns:
            continue
        known = manifest[manifest[label].notna()]
        for split in ("val", "test"):
            values = known.loc[known["split"] == split, label]
            if values.empty:
                continue  # no labels at all there: require_labels speaks for the test split
            positives = int((values == 1).sum())
            missing = (
                "positive" if positives == 0 else "negative" if positives == len(values) else ""
            )
            if missing:
                found.append(
                    f"{label}: the {split} split has no {missing} case among its "
                    f"{len(values)} labelled instance(s); its "
                    f"{'threshold' if split == 'val' else 'AUROC'} is undefined. Collect more "
                    "studies or snapshot with other --fractions"
                )
    for message in found:
        _log.warning("training data: %s", message)
    return found
