"""Where a training run came from: the code that ran it and the snapshot it read.

:func:`source_tags` names the code: the medai version and, when medai runs from a git
checkout, the commit of that checkout and whether the ``medai/`` tree differs from it
(``medai.git_dirty``: a run from uncommitted code cannot be reproduced from the commit
alone). MLflow's own ``mlflow.source.git.commit`` is set too, so its UI shows the commit.

:func:`log_snapshot_inputs` records the snapshot with :func:`mlflow.log_input`, one
dataset per split, so MLflow's *Datasets* view lists what the run trained, validated and
tested on (contexts ``training``, ``validation``, ``test``). Each dataset is named
``<snapshot>/<split>`` and its digest is the snapshot's manifest hash (its first 36
digits: MLflow keeps no more); the split is in the name because MLflow keeps one input per
name and digest, so three inputs of one name would collapse into the first. MLflow stores
a dataset's schema (column names and types) and size, never its rows.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.pandas_dataset import from_pandas

import medai

__all__ = [
    "DIGEST_LENGTH",
    "GIT_COMMIT_TAG",
    "GIT_DIRTY_TAG",
    "SPLIT_CONTEXTS",
    "VERSION_TAG",
    "dataset_name",
    "log_snapshot_inputs",
    "source_tags",
]

logger = logging.getLogger(__name__)

VERSION_TAG = "medai.version"
GIT_COMMIT_TAG = "medai.git_commit"
GIT_DIRTY_TAG = "medai.git_dirty"
# MLflow's own tag: its UI shows it as the run's source commit.
_MLFLOW_COMMIT_TAG = "mlflow.source.git.commit"
# The manifest's splits and the context MLflow's Datasets view shows for each.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
# MLflow's dataset digest column holds 36 characters.
DIGEST_LENGTH = 36
_GIT_TIMEOUT_S = 10.0


def _source_root() -> Path:
    # medai/__init__.py -> the folder holding the medai package (a checkout's root).
    return Path(medai.__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` stdout, stripped; None when git is absent or fails."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            ["git", "-C", str(root), *args],  # noqa: S607 - git from PATH, as a user runs it
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_tags(root: Path | None = None) -> dict[str, str]:
    """The run tags naming the code: medai's version, and its git commit in a checkout.

    Parameters
    ----------
    root
        The folder holding the ``medai`` package; the running package's if None.

    Returns
    -------
    dict
        ``medai.version`` always; ``medai.git_commit``, ``medai.git_dirty`` (``"true"``
        or ``"false"``) and ``mlflow.source.git.commit`` when ``root`` is a git checkout
        (an installed wheel is not: it has its version only).
    """
    root = root or _source_root()
    tags = {VERSION_TAG: medai.__version__}
    if not (root / ".git").exists():
        return tags
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        logger.warning("medai runs from a git checkout whose commit could not be read")
        return tags
    # Tracked changes and new files in the package, not elsewhere in the checkout: the
    # model configuration and the snapshot are recorded on their own.
    status = _git(root, "status", "--porcelain", "--", "medai")
    tags[GIT_COMMIT_TAG] = commit
    tags[_MLFLOW_COMMIT_TAG] = commit
    tags[GIT_DIRTY_TAG] = "unknown" if status is None else str(bool(status)).lower()
    return tags


def dataset_name(snapshot: str, split: str) -> str:
    """The MLflow dataset name of one split of a snapshot: ``<snapshot>/<split>``."""
    return f"{snapshot}/{split}"


def log_snapshot_inputs(manifest: Any, snapshot: Mapping[str, Any]) -> None:
    """Log each split of the snapshot's manifest as an input of the active MLflow run.

    Parameters
    ----------
    manifest
        The snapshot's manifest (:func:`medai.snapshots.load_snapshot`), a DataFrame with
        a ``split`` column.
    snapshot
        Its catalog record: ``name``, ``content_hash`` and ``manifest`` (the file).
    """
    name = str(snapshot["name"])
    digest = str(snapshot["content_hash"])[:DIGEST_LENGTH]
    manifest_file = snapshot.get("manifest")
    source = Path(manifest_file).as_uri() if manifest_file else name
    for split, context in SPLIT_CONTEXTS.items():
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        with warnings.catch_warnings():
            # MLflow's advice for model signatures (integer columns cannot hold a missing
            # value) and its note that a local file is a local file: neither applies to a
            # dataset recorded as an input.
            warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*multiple ways", category=UserWarning)
            dataset = from_pandas(
                rows, source=source, name=dataset_name(name, split), digest=digest
            )
            mlflow.log_input(dataset, context=context)  # where MLflow infers the schema
