"""The training data checks on a manifest: missing labels refuse, one-class splits warn."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from medai.errors import UnlabelledSnapshot
from medai.training.label_check import one_class_splits, require_labels


def _manifest(rows: list[tuple[str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"split": [split for split, _ in rows], "nodule": [value for _, value in rows]}
    ).astype({"nodule": "Float64"})


def test_a_finding_without_test_labels_is_refused_naming_the_split() -> None:
    manifest = _manifest([("train", 1.0), ("train", 0.0), ("val", 1.0), ("test", None)])
    with pytest.raises(UnlabelledSnapshot, match=r"nodule \(none in test\)"):
        require_labels(manifest, ["nodule"], "s1")


def test_a_split_with_one_class_is_named_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    manifest = _manifest(
        [("train", 1.0), ("train", 0.0), ("val", 0.0), ("val", 0.0), ("test", 1.0), ("test", 0.0)]
    )
    require_labels(manifest, ["nodule"], "s1")  # labelled everywhere: not refused
    with caplog.at_level(logging.WARNING, logger="medai.training.label_check"):
        found = one_class_splits(manifest, ["nodule"])
    assert len(found) == 1
    assert "val split has no positive case among its 2" in found[0]
    assert "threshold is undefined" in found[0]
    assert any("val split has no positive" in r.getMessage() for r in caplog.records)


def test_a_test_split_of_positives_only_is_named() -> None:
    manifest = _manifest([("train", 0.0), ("val", 1.0), ("val", 0.0), ("test", 1.0)])
    (message,) = one_class_splits(manifest, ["nodule"])
    assert "test split has no negative case" in message and "AUROC is undefined" in message


def test_both_classes_everywhere_warns_nothing() -> None:
    manifest = _manifest([(s, v) for s in ("train", "val", "test") for v in (0.0, 1.0)])
    assert one_class_splits(manifest, ["nodule"]) == []
