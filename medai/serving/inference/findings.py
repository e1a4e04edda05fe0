"""One finding of a prediction: a label, its probability and the operating-threshold decision."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Finding"]


@dataclass(frozen=True)
class Finding:
    """The model's answer for one label of one study.

    Parameters
    ----------
    label
        The finding's name, as the model was trained on it (e.g. ``"pneumothorax"``).
    probability
        The study-level probability in [0, 1] (the maximum over the study's instances).
    threshold
        The operating threshold chosen on the validation split during training.
    positive
        ``probability >= threshold``.
    """

    label: str
    probability: float
    threshold: float
    positive: bool
