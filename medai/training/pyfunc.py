"""The registered model's ``python_function`` flavor: probabilities by label, and positives.

A model logged by :func:`log_model` has two flavors over one ``torch.export`` program:

- ``pytorch`` (:func:`mlflow.pytorch.load_model`): the network, returning logits, for
  notebooks and checks that want the tensor;
- ``python_function`` (:func:`mlflow.pyfunc.load_model`, ``mlflow models serve``):
  :class:`ProbabilityModel`, whose ``predict`` takes images ``(N, 1, H, W)`` float32 in
  [0, 1] and returns a DataFrame with one column of probabilities (the sigmoid of the
  logits) per label, named after the label. With ``params={"positives": True}`` it adds
  ``<label>_positive``: whether the probability reaches the label's operating threshold,
  chosen on the validation split in training (``val/threshold/<label>`` of the run); NA
  where the run had no threshold for the label.

The labels and thresholds travel inside the model (``medai_outputs.json``) and in its
metadata (``mlflow.models.get_model_info(uri).metadata``), so a consumer needs neither the
training run nor its configuration. Loading executes no pickled code: the program is
``torch.export``'s, the labels and thresholds are JSON.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import FLAVOR_NAME as PYFUNC_FLAVOR
from mlflow.pyfunc import add_to_model
from torch import nn

__all__ = [
    "OUTPUTS_FILE",
    "POSITIVES_PARAM",
    "ProbabilityModel",
    "log_model",
    "positive_column",
    "save_model",
    "signature",
]

OUTPUTS_FILE = "medai_outputs.json"
POSITIVES_PARAM = "positives"
_LOADER_MODULE = __name__
# Model.log names the flavor after the module it is given; ours saves MLflow's pytorch
# flavor (and overrides only the pyfunc loader), so it is recorded as "pytorch".
_FLAVOR = "pytorch"


def positive_column(label: str) -> str:
    """The column saying whether ``label`` is positive at its threshold."""
    return f"{label}_positive"


class ProbabilityModel:
    """The pyfunc model: a network's logits as per-label probabilities (and positives).

    Parameters
    ----------
    network
        The module returning logits ``(N, len(labels))``.
    labels
        The findings, in the order of the network's outputs.
    thresholds
        Each label's operating threshold; NaN where there is none.
    device
        Where ``network`` runs.
    """

    def __init__(
        self,
        network: nn.Module,
        labels: Sequence[str],
        thresholds: Sequence[float],
        device: str = "cpu",
    ) -> None:
        if len(labels) != len(thresholds):
            raise ValueError(f"{len(labels)} labels but {len(thresholds)} thresholds")
        self.network = network
        self.labels = tuple(labels)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.device = device

    def predict(self, data: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Probabilities (and, with ``params={"positives": True}``, positives) of images.

        Parameters
        ----------
        data
            Images ``(N, 1, H, W)``, float32 in [0, 1] (a NumPy array or anything
            :func:`numpy.asarray` turns into one).
        params
            ``{"positives": True}`` adds a boolean ``<label>_positive`` column per label.

        Returns
        -------
        pandas.DataFrame
            One row per image; a ``float64`` column of probabilities per label.
        """
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(data, dtype=np.float32)))
        with torch.no_grad():
            logits = self.network(images.to(self.device))
        probabilities = torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)
        frame = pd.DataFrame(probabilities, columns=list(self.labels))
        if params and params.get(POSITIVES_PARAM):
            for label, threshold in zip(self.labels, self.thresholds, strict=True):
                # Without a threshold there is no positive/negative to give: NA, not False.
                values = (
                    pd.array([pd.NA] * len(frame), dtype="boolean")
                    if math.isnan(threshold)
                    else pd.array(frame[label].to_numpy() >= threshold, dtype="boolean")
                )
                frame[positive_column(label)] = values
        return frame


def _outputs(labels: Sequence[str], thresholds: Sequence[float]) -> dict[str, Any]:
    return {
        "labels": list(labels),
        # JSON has no NaN: a label without a threshold is null.
        "thresholds": {
            label: (None if math.isnan(t) else float(t))
            for label, t in zip(labels, thresholds, strict=True)
        },
    }


def save_model(
    pytorch_model: nn.Module,
    path: str,
    mlflow_model: Model | None = None,
    *,
    labels: Sequence[str],
    thresholds: Sequence[float],
    **kwargs: Any,
) -> None:
    """:func:`mlflow.pytorch.save_model`, with this module as the pyfunc loader.

    ``labels`` and ``thresholds`` are written to ``medai_outputs.json`` beside the
    program; the other arguments are :func:`mlflow.pytorch.save_model`'s.
    """
    mlflow_model = mlflow_model or Model()
    mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, **kwargs)
    root = Path(path)
    (root / OUTPUTS_FILE).write_text(
        json.dumps(_outputs(labels, thresholds), indent=2) + "\n", encoding="utf-8"
    )
    conf = mlflow_model.flavors.get(PYFUNC_FLAVOR)
    if conf is None:
        # MLflow leaves the pyfunc flavor out for some input examples; ours needs it.
        add_to_model(  # type: ignore[no-untyped-call]
            mlflow_model, loader_module=_LOADER_MODULE, model_config={"device": None}
        )
        conf = mlflow_model.flavors[PYFUNC_FLAVOR]
    conf["loader_module"] = _LOADER_MODULE
    # Our loader reads the model's folder (program, outputs file), not only data/.
    conf.pop("data", None)
    conf.pop("pickle_module_name", None)
    mlflow_model.save(str(root / "MLmodel"))


def _load_pyfunc(path: str, model_config: Mapping[str, Any] | None = None) -> ProbabilityModel:
    """Load the pyfunc flavor from the model folder ``path`` (called by MLflow)."""
    device = (model_config or {}).get("device") or "cpu"
    network = mlflow.pytorch.load_model(path, device=device)
    outputs = json.loads((Path(path) / OUTPUTS_FILE).read_text("utf-8"))
    labels = [str(label) for label in outputs["labels"]]
    thresholds = [
        math.nan if outputs["thresholds"].get(label) is None else outputs["thresholds"][label]
        for label in labels
    ]
    return ProbabilityModel(network, labels, thresholds, device=str(device))


def signature(example: np.ndarray[Any, Any], labels: Sequence[str]) -> ModelSignature:
    """The model's signature: images in, one probability column per label out.

    The ``positives`` parameter is declared (default False) so that MLflow passes it on.
    """
    probabilities = pd.DataFrame(
        np.full((len(example), len(labels)), 0.5, dtype=np.float64), columns=list(labels)
    )
    return infer_signature(example, probabilities, params={POSITIVES_PARAM: False})


def log_model(
    network: nn.Module,
    *,
    name: str,
    labels: Sequence[str],
    thresholds: Sequence[float],
    input_example: np.ndarray[Any, Any],
    **kwargs: Any,
) -> ModelInfo:
    """Log ``network`` in the active run with both flavors (see the module docstring).

    Parameters
    ----------
    network
        The trained network, on the CPU, in eval mode; it returns logits.
    name
        The model's name in the run (``"model"``).
    labels, thresholds
        The outputs' labels and their validation-chosen thresholds (NaN: none).
    input_example
        Images of the input's shape (noise, never a real image).
    **kwargs
        Passed to :func:`mlflow.pytorch.save_model` through :meth:`mlflow.models.Model.log`
        (``registered_model_name``, ``pip_requirements``, ``metadata``...).
    """
    metadata = {
        **kwargs.pop("metadata", {}),
        **_outputs(labels, thresholds),
        "outputs": (
            "python_function: a probability column per label (the sigmoid of the logits), "
            f'and <label>_positive with params={{"{POSITIVES_PARAM}": true}}; '
            "pytorch: logits"
        ),
    }
    info: ModelInfo = Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        flavor_name=_FLAVOR,
        pytorch_model=network,
        labels=labels,
        thresholds=thresholds,
        signature=signature(input_example, labels),
        input_example=input_example,
        metadata=metadata,
        # torch.export's program (MLflow's default outside Databricks): loading it runs
        # no pickled code, unlike the "pickle" format.
        serialization_format="pt2",
        **kwargs,
    )
    return info
