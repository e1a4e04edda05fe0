"""Recent predictions, in memory only, for their heatmaps and reports: bounded and expiring.

A stored prediction holds what its heatmap and its Structured Report are made from: the
preprocessed images (model inputs, not the files), the first instance's header without
its pixel data (the SR references the study), the findings and the model version that
made them. It is identified clinical data, so it lives in this process's memory only,
for ``prediction_ttl_seconds`` at most, and at most ``max_kept_predictions`` of them
(the oldest go first). Nothing is written to disk; a restart forgets everything.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from pydicom.dataset import Dataset

    from medai.serving.inference.findings import Finding
    from medai.serving.inference.model import ServedModel

__all__ = ["PredictionStore", "StoredPrediction", "header_only"]


def header_only(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without its pixel data (group 0x7FE0), sharing the other elements.

    The elements are copied as they are, read or not: iterating the data set would convert
    every raw element (milliseconds a request, on the event loop), the SR reads a few.
    """
    from pydicom.dataset import Dataset

    header = Dataset()
    for tag, element in ds.items():
        if tag.group != 0x7FE0:
            header[tag] = element
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


@dataclass(eq=False)
class StoredPrediction:
    """One prediction, as kept for its heatmap and report.

    Attributes
    ----------
    id
        The prediction id (a random UUID).
    owner
        The API key name of the caller who made it; only they (or an admin) read it.
    model
        The model version that made it (kept alive while the prediction is).
    findings
        The study-level findings (the maximum over instances per label).
    instance_probabilities
        ``(instances, labels)``.
    images
        The model inputs, ``(instances, 1, *image_size)`` on the CPU.
    source
        The first instance's header (no pixel data), for the Structured Report.
    response
        The JSON body answered for it.
    series
        For a series-level model: the headers (no pixel data) of every slice of the
        volume, in slice order, which the Structured Report references; empty otherwise.
    """

    id: str
    owner: str
    model: ServedModel
    findings: tuple[Finding, ...]
    instance_probabilities: npt.NDArray[np.float32]
    images: torch.Tensor
    source: Dataset
    response: dict[str, Any]
    created: float = 0.0
    heatmaps: dict[int, bytes] = field(default_factory=dict)
    report: bytes | None = None
    series: tuple[Dataset, ...] = ()


class PredictionStore:
    """Predictions by id, each for ``ttl_s`` seconds, ``max_items`` at most.

    Safe to use from the event loop and worker threads.
    """

    def __init__(
        self, *, ttl_s: float, max_items: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._clock = clock
        self._items: OrderedDict[str, StoredPrediction] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def put(self, prediction: StoredPrediction) -> None:
        """Keep ``prediction``, dropping expired ones and the oldest beyond the bound."""
        with self._lock:
            prediction.created = self._clock()
            self._items[prediction.id] = prediction
            self._expire()
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, prediction_id: str) -> StoredPrediction | None:
        """The prediction, or None when unknown, expired or dropped."""
        with self._lock:
            self._expire()
            return self._items.get(prediction_id)

    def clear(self) -> None:
        """Forget every prediction (at shutdown)."""
        with self._lock:
            self._items.clear()

    def _expire(self) -> None:
        # Insertion order is creation order: the expired ones are at the front.
        oldest = self._clock() - self.ttl_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.created > oldest:
                break
            self._items.popitem(last=False)
