"""Datasets and data loaders of a training run, from a snapshot manifest.

Each split of the snapshot (``train``, ``val``, ``test``) becomes a list of MONAI data
dictionaries (:func:`medai.training.reader.records_from_manifest`: the store key, the
label vector with NaN where unknown, and the site), a dataset decoding the images from
the object store through the model's transform chain, and a loader.

Caching (``[data] cache``): MONAI caches what the transforms before the first random one
give, i.e. the decoded, resized, intensity-scaled image, so augmentation stays fresh each
epoch.

``"none"``
    :class:`monai.data.Dataset`: every image decoded every epoch.
``"memory"``
    :class:`monai.data.CacheDataset`, read through a :class:`monai.data.ThreadDataLoader`:
    once the images are in memory, a process pool would only add the cost of pickling
    each batch; one background thread overlaps the augmentation with the training step.
``"disk"``
    :class:`monai.data.PersistentDataset` under ``$MEDAI_HOME/cache/<snapshot hash>/
    <transform hash>``: a change of snapshot or of transforms never reads a stale cache.

Shuffling uses a generator seeded from the configuration, and the random transforms
their own seeded generators, so one seed gives the same batches in the same order.

Under ``torchrun`` (:mod:`medai.training.distributed`) each rank reads a shard. Training
draws through a :class:`~torch.utils.data.DistributedSampler` seeded with the configured
seed, the same on every rank so the shards partition each epoch's permutation, while the
loader's generator (which seeds MONAI's random transforms) is offset by the rank so the
shards are not augmented in lockstep. Validation and test hold records ``rank, rank + W,
...`` only, with no padding (a padded sampler would count some images twice), which
:func:`medai.training.distributed.gather_split` puts back in manifest order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.data.dataloader import DataLoader
from monai.data.dataset import CacheDataset, Dataset, PersistentDataset
from monai.data.thread_buffer import ThreadDataLoader
from monai.transforms.compose import Compose
from monai.transforms.transform import MapTransform
from torch.utils.data import DistributedSampler, Sampler

from medai.config import Settings, get_settings
from medai.snapshots import SPLITS, load_snapshot
from medai.store import ObjectStore
from medai.training import distributed
from medai.training.case_predictions import case_index
from medai.training.config import ModelConfig
from medai.training.label_check import one_class_splits, require_labels
from medai.training.reader import LoadDicomFromStore, records_from_manifest
from medai.training.transforms import build_transforms
from medai.training.volume_reader import LoadSeriesFromStore

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "SITE_KEY",
    "TrainingData",
    "build_training_data",
    "evaluation_chain",
    "image_loader",
    "make_dataset",
    "make_loader",
    "split_records",
]

IMAGE_KEY = "image"
LABEL_KEY = "label"
SITE_KEY = "site"


@dataclass
class TrainingData:
    """The datasets and loaders of one run.

    Attributes
    ----------
    snapshot
        The snapshot's catalog record (:meth:`SnapshotInfo.to_dict`: name, content hash,
        counts...).
    records
        Data dictionaries per split.
    loaders
        ``train`` (shuffled, augmented), ``val`` and ``test`` (in manifest order,
        deterministic transforms).
    test_cases
        The test split's manifest row numbers, case ids (SOPInstanceUID), studies,
        patients and sites, in manifest order.
    """

    snapshot: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]
    loaders: dict[str, DataLoader] = field(default_factory=dict)
    # The test rows' ids in manifest order (:func:`medai.training.case_predictions.case_index`),
    # for the per-case predictions a run logs; None when built without a manifest.
    test_cases: pd.DataFrame | None = None
    # The validation rows' ids, for study-level thresholds (chosen on study-level scores).
    val_cases: pd.DataFrame | None = None


def split_records(
    manifest: Any, labels: Sequence[str], keep: Sequence[str] = (SITE_KEY,)
) -> dict[str, list[dict[str, Any]]]:
    """The manifest's rows as data dictionaries, per split (every split present, maybe empty)."""
    return {
        split: records_from_manifest(
            manifest[manifest["split"] == split],
            labels,
            image_key=IMAGE_KEY,
            label_key=LABEL_KEY,
            keep=keep,
        )
        for split in SPLITS
    }


def make_dataset(
    records: Sequence[dict[str, Any]],
    transform: Compose,
    cache: str,
    *,
    cache_dir: Path | None = None,
) -> Dataset:
    """A MONAI dataset over ``records`` with the caching of ``cache`` (see the module doc)."""
    if cache == "none":
        return Dataset(data=list(records), transform=transform)
    if cache == "memory":
        # Threads decode in parallel (pydicom and numpy release the GIL for the heavy parts).
        return CacheDataset(
            data=list(records), transform=transform, num_workers=None, progress=False
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        cache_dir.mkdir(parents=True, exist_ok=True)
        # weights_only=False: the cache holds MONAI MetaTensors and numpy label vectors,
        # which the restricted unpickler refuses; it is written by this code under
        # MEDAI_HOME, as trusted as the catalog beside it.
        return PersistentDataset(
            data=list(records), transform=transform, cache_dir=cache_dir, weights_only=False
        )
    raise ValueError(f"unknown cache {cache!r}; one of none, memory, disk")


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    threaded: bool = False,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A loader over ``dataset``; ``threaded`` for a :class:`ThreadDataLoader` (memory cache).

    Shuffling (for training) draws from a generator seeded with ``seed``, which also seeds
    MONAI's random transforms. A ``sampler`` (a :class:`DistributedSampler`) replaces the
    shuffling; ``shuffle`` then only says that this is a training loader.
    """
    generator = torch.Generator().manual_seed(seed)
    # A training batch of one sample breaks batch normalisation ("expected more than 1
    # value per channel"); drop that one sample (a different one each epoch, as shuffled).
    size = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    drop_last = shuffle and size > 1 and size % batch_size == 1
    order = {"sampler": sampler} if sampler is not None else {"shuffle": shuffle}
    if threaded:
        loader: DataLoader = ThreadDataLoader(
            dataset,
            batch_size=batch_size,
            generator=generator,
            num_workers=0,
            drop_last=drop_last,
            **order,
        )
        return loader
    return DataLoader(
        dataset,
        batch_size=batch_size,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        **order,
    )


def image_loader(config: ModelConfig, settings: Settings) -> MapTransform:
    """The chain's first transform: a 2-D image per row, or a series' volume per row.

    ``[data] level = "series"`` reads each row's ``store_keys`` (all slices, in order)
    into a ``(1, D, H, W)`` volume resampled to ``[transforms] spacing_mm``.
    """
    if config.data.level == "series":
        spacing = config.transforms.spacing_mm
        return LoadSeriesFromStore(IMAGE_KEY, settings.resolved_store_dir, spacing_mm=spacing)
    return LoadDicomFromStore(IMAGE_KEY, ObjectStore(settings.resolved_store_dir))


def evaluation_chain(config: ModelConfig, settings: Settings) -> Compose:
    """Read a manifest row from the store and apply the evaluation transforms (no augmentation).

    What a step after training reads images with (the monitoring reference, the int8
    model's calibration under torchrun), as the validation and test loaders do.
    """
    return build_transforms(
        config.transforms,
        train=False,
        keys=(IMAGE_KEY,),
        loader=image_loader(config, settings),
        seed=config.seed,
    )


def _transform_hash(config: ModelConfig) -> str:
    text = json.dumps(config.transforms.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_training_data(config: ModelConfig, settings: Settings | None = None) -> TrainingData:
    """Load the snapshot of ``config`` (hash-checked) and build its datasets and loaders.

    Raises
    ------
    medai.errors.SnapshotNotFound, SnapshotTampered
        From :func:`medai.snapshots.load_snapshot`.
    medai.errors.UnlabelledSnapshot
        A configured label has no known value in the train or test split.
    KeyError
        A configured label is not a column of the manifest.
    ValueError
        The training, validation or test split is empty.
    """
    settings = settings or get_settings()
    manifest = load_snapshot(config.data.snapshot, settings=settings)
    snapshot = dict(manifest.attrs["snapshot"])
    records = split_records(manifest, config.data.labels)
    empty = [split for split in SPLITS if not records[split]]
    if empty:
        raise ValueError(
            f"snapshot {config.data.snapshot!r} has no instances in the split(s) "
            f"{', '.join(empty)}: training needs train, val and test"
        )
    require_labels(manifest, config.data.labels, config.data.snapshot)
    one_class_splits(manifest, config.data.labels)
    loader = image_loader(config, settings)
    cache_dir = (
        settings.resolved_home
        / "cache"
        / str(snapshot["content_hash"])[:16]
        / _transform_hash(config)
    )
    data = TrainingData(
        snapshot=snapshot,
        records=records,
        test_cases=case_index(manifest),
        val_cases=case_index(manifest, "val"),
    )
    threaded = config.data.cache == "memory"
    rank, world = distributed.rank(), distributed.world_size()
    for split in SPLITS:
        train = split == "train"
        chain = build_transforms(
            config.transforms, train=train, keys=(IMAGE_KEY,), loader=loader, seed=config.seed
        )
        # The training set whole (the sampler picks each epoch's shard); the others as
        # this rank's fixed shard, so a memory cache holds only what this rank evaluates.
        shard = records[split] if train or world == 1 else records[split][rank::world]
        dataset = make_dataset(shard, chain, config.data.cache, cache_dir=cache_dir / split)
        sampler: DistributedSampler[Any] | None = (
            DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed
            )
            if train and world > 1
            else None
        )
        data.loaders[split] = make_loader(
            dataset,
            batch_size=config.schedule.batch_size,
            shuffle=train,
            seed=config.seed + rank,
            num_workers=config.data.num_workers,
            threaded=threaded,
            sampler=sampler,
        )
    return data
