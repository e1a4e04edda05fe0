"""Refuse to train on a snapshot without labels for the configured findings.

A snapshot taken before the label sheets were imported (``--all-studies``) has ``<NA>`` in
every finding column; the masked loss would then be 0 on no labels at all and a model
would be registered that learned nothing. Training needs, for every configured finding,
known labels in the training split and in the test split (the gate is measured there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medai.errors import UnlabelledSnapshot

__all__ = ["require_labels"]

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
