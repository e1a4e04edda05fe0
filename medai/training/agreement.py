"""Whether an optimised forward pass agrees with the float network on the test split.

Issue 16's bounds for any faster form of a trained network (int8, :mod:`.quantize`;
bfloat16, :mod:`.bfloat16`): on every image of the run's **test** split the largest
absolute difference of a probability from the float network (torch, CPU) is at most
:data:`MAX_PROBABILITY_DIFFERENCE`, and each label's test AUROC
(:func:`medai.training.evaluation.auroc`) moves by at most :data:`MAX_AUROC_DELTA`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from medai.config import Settings
from medai.training import distributed
from medai.training.config import ModelConfig
from medai.training.data import (
    IMAGE_KEY,
    LABEL_KEY,
    TrainingData,
    evaluation_chain,
    make_dataset,
    make_loader,
)
from medai.training.prediction import label_aurocs

__all__ = [
    "MAX_AUROC_DELTA",
    "MAX_PROBABILITY_DIFFERENCE",
    "Batch",
    "Batches",
    "CheckedForm",
    "Reference",
    "judge",
    "reference_answers",
    "split_batches",
]

MAX_PROBABILITY_DIFFERENCE: Final = 0.01
MAX_AUROC_DELTA: Final = 0.005

# Images (N, 1, H, W) float32 and their labels (N, L), NaN where unknown.
Batch = tuple[torch.Tensor, npt.NDArray[np.float64]]
Batches = Callable[[], Iterable[Batch]]


@dataclass(frozen=True)
class CheckedForm:
    """What the check of a faster form of a run's network found.

    Attributes
    ----------
    accepted
        Whether it passed.
    reason
        Why it was refused (empty when accepted).
    max_abs_prob_diff
        Its largest |probability difference| from the float network over the test split
        (NaN when not measured).
    auroc_delta
        Each label's test AUROC in this form minus the float network's (labels without
        both classes in the test split are left out).
    test_images
        How many test images checked it.
    seconds
        How long making and checking it took.
    """

    # The prefix of its metrics (``<prefix>/max_abs_prob_diff``...), set by each form.
    metric_prefix: ClassVar[str] = ""

    accepted: bool
    reason: str
    max_abs_prob_diff: float = math.nan
    auroc_delta: dict[str, float] = field(default_factory=dict)
    test_images: int = 0
    seconds: float = 0.0

    @property
    def tag(self) -> str:
        """The run tag's value: ``accepted`` or ``refused: <reason>``."""
        return "accepted" if self.accepted else f"refused: {self.reason}"

    def metrics(self) -> dict[str, float]:
        """``<prefix>/max_abs_prob_diff`` and ``<prefix>/test_auroc_delta/<label>`` (the
        finite ones)."""
        prefix = self.metric_prefix
        values = {
            f"{prefix}/max_abs_prob_diff": self.max_abs_prob_diff,
            **{f"{prefix}/test_auroc_delta/{label}": v for label, v in self.auroc_delta.items()},
        }
        return {name: value for name, value in values.items() if math.isfinite(value)}


@dataclass(frozen=True)
class Reference:
    """The float network's answers on the test split, computed once per check."""

    labels: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    aurocs: list[float]


def reference_answers(network: nn.Module, test: Batches) -> Reference:
    """The float ``network``'s probabilities and AUROCs over ``test``."""
    truths, probabilities = [], []
    with torch.inference_mode():
        for images, labels in test():
            logits = network(images.float())
            probabilities.append(torch.sigmoid(logits.float()).double().numpy())
            truths.append(np.asarray(labels, dtype=np.float64))
    if not truths:
        raise ValueError("the test split has no images to check it on")
    truth, probability = np.concatenate(truths), np.concatenate(probabilities)
    return Reference(truth, probability, label_aurocs(truth, probability))


def judge(
    form: str,
    probabilities: npt.NDArray[np.float64],
    reference: Reference,
    label_names: Sequence[str],
    max_abs_prob_diff: float = MAX_PROBABILITY_DIFFERENCE,
    max_auroc_delta: float = MAX_AUROC_DELTA,
) -> tuple[float, dict[str, float], str]:
    """The check's figures of ``form``'s probabilities and, when it fails, why (empty when
    it passes): the largest |Δp|, each label's AUROC minus the reference's."""
    difference = float(np.max(np.abs(probabilities - reference.probabilities)))
    deltas = {
        label: ours - theirs
        for label, ours, theirs in zip(
            label_names,
            label_aurocs(reference.labels, probabilities),
            reference.aurocs,
            strict=True,
        )
        if not math.isnan(theirs)  # a label without both classes in the test split
    }
    problems = []
    if not difference <= max_abs_prob_diff:  # NaN fails too
        problems.append(f"max |Δp| {difference:.3g} > {max_abs_prob_diff:g}")
    moved = {label: d for label, d in deltas.items() if not abs(d) <= max_auroc_delta}
    problems += [f"{label} AUROC moved {d:+.3g}" for label, d in moved.items()]
    if moved:
        problems[-1] += f" (at most ±{max_auroc_delta:g})"
    why = f"{form}: {', '.join(problems)}" if problems else ""
    return difference, deltas, why


def split_batches(
    config: ModelConfig, data: TrainingData, settings: Settings, split: str
) -> Batches:
    """The split's batches with the evaluation transforms, in manifest order.

    One process: the run's own loader (its cache included). Under ``torchrun`` each rank's
    loader holds a shard, so the whole split is read again from the store.
    """
    if distributed.world_size() == 1:
        loader = data.loaders[split]
    else:
        chain = evaluation_chain(config, settings)
        dataset = make_dataset(data.records[split], chain, "none")
        loader = make_loader(
            dataset, batch_size=config.schedule.batch_size, shuffle=False, seed=config.seed
        )

    def batches() -> Iterator[Batch]:
        for batch in loader:
            images = torch.as_tensor(batch[IMAGE_KEY]).float().cpu()
            labels = torch.as_tensor(batch[LABEL_KEY]).double().cpu().numpy()
            yield images, labels

    return batches
