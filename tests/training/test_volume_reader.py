"""The volume reader: a series' store keys to one oriented, resampled (1, D, H, W) volume."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medai.errors import SeriesRefused
from medai.store import ObjectStore
from medai.training.reader import records_from_manifest
from medai.training.volume_reader import LoadSeriesFromStore, read_series, series_to_volume
from tests.utils.campaign import dataset_bytes
from tests.utils.ct_series import CORONAL, ct_series

SPACING = 2.5


def _marked_axial(depth: int, slices: int = 6) -> list[np.ndarray]:
    """Slice k is 1000 + 100 k (ascending along the normal); slice ``depth`` has a marker."""
    pixels = [np.full((8, 8), 1000 + 100 * k, dtype=np.uint16) for k in range(slices)]
    pixels[depth][2:5, 3:6] = 3000
    return pixels


def _stored(store: ObjectStore, datasets: list) -> list[str]:  # type: ignore[type-arg]
    return [store.put(dataset_bytes(ds)) for ds in datasets]


def test_shuffled_slices_come_back_in_anatomical_order_at_the_marker_depth(
    tmp_path: Path,
) -> None:
    store = ObjectStore(tmp_path / "store")
    positions = [-30.0 + SPACING * k for k in range(6)]
    series = ct_series(positions, pixels=_marked_axial(depth=2))
    keys = _stored(store, series)
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)

    volume = read_series("\n".join(shuffled), tmp_path / "store")

    assert volume.shape == (1, 6, 8, 8) and volume.dtype == np.float32
    assert volume.min() >= 0.0 and volume.max() == pytest.approx(1.0)
    background = volume[0, :, 0, 0]
    # One window for the whole volume: the background rises slice by slice, inferior first.
    assert np.all(np.diff(background) > 0)
    marker = volume[0, :, 2:5, 3:6].mean(axis=(1, 2)) - background
    assert int(np.argmax(marker)) == 2
    # The same volume from the files in any order (bytes given directly, as serving does).
    again = series_to_volume([dataset_bytes(ds) for ds in reversed(series)])
    np.testing.assert_array_equal(again.array, volume)
    assert again.spacing_mm == pytest.approx((SPACING, 0.8, 0.7))


def test_resampling_to_a_configured_spacing_keeps_the_marker_at_its_depth(
    tmp_path: Path,
) -> None:
    store = ObjectStore(tmp_path / "store")
    series = ct_series([SPACING * k for k in range(8)], pixels=_marked_axial(depth=4, slices=8))
    keys = _stored(store, series)

    volume = series_to_volume([store.read(k) for k in keys[::-1]], spacing_mm=(5.0, 1.6, 1.4))

    assert volume.array.shape == (1, 4, 4, 4)
    assert volume.spacing_mm == pytest.approx((5.0, 1.6, 1.4))
    # The marker at 10 mm above the first slice is at depth 2 of a 5 mm grid.
    profile = volume.array[0, :, 1:3, 1:3].mean(axis=(1, 2)) - volume.array[0, :, 0, 0]
    assert int(np.argmax(profile)) == 2
    transform = LoadSeriesFromStore("image", store, spacing_mm=(5.0, 1.6, 1.4))
    out = transform({"image": "\n".join(keys), "label": 1})
    np.testing.assert_allclose(out["image"], volume.array, atol=1e-6)
    assert out["label"] == 1


def test_a_coronal_series_is_turned_to_the_axial_layout(tmp_path: Path) -> None:
    # Coronal: rows run to the patient's left, columns downwards, the normal posterior.
    pixels = [np.full((6, 8), 1000 + 100 * k, dtype=np.uint16) for k in range(4)]
    for image in pixels:
        image[0, :] = 3000  # the top row: most superior
    series = ct_series(
        [10.0 * k for k in range(4)], size=(6, 8), orientation=CORONAL, pixels=pixels
    )

    volume = series_to_volume([dataset_bytes(ds) for ds in series])

    # (S, P, L): 6 rows become the superior axis, 4 slices the posterior one.
    assert volume.array.shape == (1, 6, 4, 8)
    assert volume.spacing_mm == pytest.approx((0.8, 10.0, 0.7))
    assert np.all(volume.array[0, -1] == volume.array.max())  # superior row last
    assert np.all(np.diff(volume.array[0, 0, :, 0]) > 0)  # posterior slices later


def test_a_window_in_the_files_is_applied_and_a_gap_is_refused(tmp_path: Path) -> None:
    # Stored 1024 + HU with intercept -1024: HU 0 at the centre of a 400 HU window -> 0.5.
    pixels = [np.full((8, 8), 1024, dtype=np.uint16) for _ in range(3)]
    series = ct_series([0.0, 2.0, 4.0], pixels=pixels, window=(0.0, 400.0))
    volume = series_to_volume([dataset_bytes(ds) for ds in series])
    assert volume.array == pytest.approx(0.5, abs=0.01)

    gap = ct_series([0.0, 2.0, 6.0, 8.0])
    with pytest.raises(SeriesRefused) as refused:
        series_to_volume([dataset_bytes(ds) for ds in gap])
    assert refused.value.reason_code == "missing-slice"


def test_records_from_a_series_manifest_carry_the_joined_store_keys() -> None:
    manifest = pd.DataFrame(
        {
            "store_key": ["a", "c"],
            "store_keys": ["a\nb", "c\nd\ne"],
            "nodule": pd.array([1, None], dtype="Int8"),
        }
    )
    records = records_from_manifest(manifest, ["nodule"])
    assert [r["image"] for r in records] == ["a\nb", "c\nd\ne"]
    assert records[0]["label"].tolist() == [1.0] and np.isnan(records[1]["label"][0])
    instance = records_from_manifest(manifest.drop(columns="store_keys"), ["nodule"])
    assert [r["image"] for r in instance] == ["a", "c"]
