"""Training runs tracked in MLflow: parameters, metrics, evaluation, the model, its version.

:func:`train_tracked` runs :func:`medai.training.loop.train` inside an MLflow run of the
experiment named after the model and logs:

- parameters: the flattened configuration (``schedule.epochs``...), the snapshot's name,
  content hash and split sizes; tags ``medai.snapshot`` / ``medai.snapshot_hash``;
- the configuration file (``config/config.toml``) and the resolved configuration
  (``config/resolved.json``) as artifacts;
- per-epoch ``train/loss``, ``val/loss``, ``val/auroc/macro``, ``lr`` with ``step=epoch``;
- the evaluation's metrics (``test/auroc/<label>``, ``test/auroc_low/<label>``...,
  :meth:`EvaluationResult.metrics`), its table (``evaluation/test.csv``) and plots
  (``plots/*.png``), and the epoch history (``evaluation/history.csv``);
- the best weights as a state dict (``weights/best.pt``), from which the inference service
  rebuilds the network with ``config/resolved.json``;
- the best network with :func:`mlflow.pytorch.log_model` as a ``torch.export`` program
  (``pt2``: loading it executes no pickled code), with a signature whose batch dimension is
  dynamic (``-1``) and an input example of two images (``torch.export`` would fix a batch
  dimension of 1 in the example to a constant), registered as a new version of the registered
  model ``config.name`` with the alias ``candidate``, and audited (``model.register``) in the
  catalog the snapshot came from (:mod:`medai.training.registry`).

Nothing identifying is logged: the snapshot holds pseudonymized data only, and what goes
to MLflow is aggregated (counts, metrics, plots of pooled results) or configuration; the
input example is noise of the input's shape, not an image.

:func:`~medai.training.registry.promote` (re-exported here with the registry's other public
names) moves the ``champion`` alias to a version whose run passes the gate.

Under ``torchrun`` every rank trains (:mod:`medai.training.distributed`) but only rank 0
opens the MLflow run, logs and registers: one run and one version per training, whatever
the number of processes (``train.world_size`` records it). The other ranks receive the run
and version ids, so every rank returns the same :class:`TrackedRun`.

The tracking URI is :attr:`medai.config.Settings.resolved_mlflow_tracking_uri` (default
``sqlite:///$MEDAI_HOME/mlflow.db``, never MLflow's deprecated file store). With a local
SQLite store, artifacts go to ``$MEDAI_HOME/mlartifacts`` rather than ``./mlruns`` of
whatever directory the command ran in.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import monai
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from medai.audit import actors
from medai.config import Settings, get_settings
from medai.training import distributed
from medai.training.config import ModelConfig, flatten
from medai.training.data import TrainingData, build_training_data
from medai.training.loop import EpochResult, TrainResult, train
from medai.training.registry import (
    CANDIDATE_ALIAS,
    CHAMPION_ALIAS,
    PromotionResult,
    audit_registration,
    check_gate,
    configure_mlflow,
    load_registered,
    promote,
    require_catalog,
)

__all__ = [
    "CANDIDATE_ALIAS",
    "CHAMPION_ALIAS",
    "PromotionResult",
    "TrackedRun",
    "check_gate",
    "configure_mlflow",
    "load_registered",
    "promote",
    "train_tracked",
]

MODEL_ARTIFACT = "model"
WEIGHTS_ARTIFACT_DIR = "weights"  # holds best.pt (medai.training.loop.CHECKPOINT_NAME)


@dataclass(frozen=True)
class TrackedRun:
    """A tracked training run: its MLflow ids and the training result."""

    run_id: str
    experiment_id: str
    model_name: str
    model_version: str
    model_uri: str
    result: TrainResult

    @classmethod
    def registered(
        cls,
        config: ModelConfig,
        run_id: str,
        experiment_id: str,
        version: str,
        result: TrainResult,
    ) -> TrackedRun:
        """The run of ``config`` registered as ``version``, its model URI by the candidate alias."""
        return cls(
            run_id=run_id,
            experiment_id=experiment_id,
            model_name=config.name,
            model_version=version,
            model_uri=f"models:/{config.name}@{CANDIDATE_ALIAS}",
            result=result,
        )


def _experiment_id(name: str, settings: Settings, uri: str) -> str:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if uri.startswith("sqlite:"):
        # Without a location MLflow would put artifacts in ./mlruns of the current directory.
        root = settings.resolved_home / "mlartifacts" / name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow would otherwise infer them by loading the model in a
    # subprocess, which costs seconds per run.
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"monai=={monai.__version__}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def _log_epoch(result: EpochResult) -> None:
    mlflow.log_metrics(result.metrics(), step=result.epoch)


def train_tracked(
    config: ModelConfig,
    settings: Settings | None = None,
    progress: Callable[[EpochResult], None] | None = None,
    *,
    device: str | None = None,
    actor: str | None = None,
) -> TrackedRun:
    """Train ``config`` in a new MLflow run, log it, and register the model as ``candidate``.

    Launched by ``torchrun``, it joins the process group for the run (and leaves it
    after); every rank trains, rank 0 alone logs, registers, audits and calls ``progress``.

    Parameters
    ----------
    config, settings, progress, device
        As :func:`medai.training.loop.train`.
    actor
        Who is recorded as registering the version; :func:`medai.audit.actors.operator`
        by default.

    Returns
    -------
    TrackedRun
        The same run and version ids on every rank; ``result`` is this rank's.
    """
    settings = settings or get_settings()
    # The version will be audited in this catalog: without one, say so before training.
    require_catalog(settings)
    with distributed.process_group(device) as context:
        # Load the snapshot first: a missing or altered one fails before an empty run is
        # logged.
        data = build_training_data(config, settings)
        if context.is_main:
            tracked = _train_logged(config, settings, progress, str(context.device), data)
            # After the run, not inside it: the chain's lock is not held for minutes of
            # logging, and a version is only recorded once it exists.
            audit_registration(
                settings,
                name=config.name,
                version=tracked.model_version,
                run_id=tracked.run_id,
                snapshot=tracked.result.snapshot,
                actor=actor or actors.operator(),
            )
            ids = (tracked.run_id, tracked.experiment_id, tracked.model_version)
            distributed.broadcast_object(ids)
            return tracked
        result = train(config, settings, device=str(context.device), data=data)
        run_id, experiment_id, version = distributed.broadcast_object(("", "", ""))
    return TrackedRun.registered(config, run_id, experiment_id, version, result)


def _train_logged(
    config: ModelConfig,
    settings: Settings,
    progress: Callable[[EpochResult], None] | None,
    device: str,
    data: TrainingData,
) -> TrackedRun:
    uri = configure_mlflow(settings)
    experiment_id = _experiment_id(config.name, settings, uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def on_epoch(result: EpochResult) -> None:
        _log_epoch(result)
        if progress is not None:
            progress(result)

    with tempfile.TemporaryDirectory(prefix="medai-train-") as tmp:
        work = Path(tmp)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            run_id = run.info.run_id
            mlflow.log_params(flatten(config))
            mlflow.set_tags({"medai.model": config.name, "medai.snapshot": config.data.snapshot})
            if config.source is not None and config.source.is_file():
                mlflow.log_artifact(str(config.source), artifact_path="config")
            resolved = work / "resolved.json"
            resolved.write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
            mlflow.log_artifact(str(resolved), artifact_path="config")

            result = train(
                config, settings, on_epoch, device=device, run_dir=work / "run", data=data
            )

            snapshot = result.snapshot
            counts = snapshot.get("counts", {})
            mlflow.log_params(
                {
                    "snapshot.name": snapshot["name"],
                    "snapshot.content_hash": snapshot["content_hash"],
                    **{
                        f"snapshot.{split}_instances": counts.get(split, {}).get("instances", "")
                        for split in ("train", "val", "test")
                    },
                    "train.device": result.device,
                    "train.monitor": result.monitor,
                    "train.world_size": distributed.world_size(),
                }
            )
            mlflow.set_tag("medai.snapshot_hash", snapshot["content_hash"])
            mlflow.log_metrics(
                {
                    "best_epoch": float(result.best_epoch),
                    "epochs_run": float(len(result.history)),
                    **result.evaluation.metrics("test"),
                }
            )
            tables = work / "evaluation"
            tables.mkdir()
            result.evaluation.table.to_csv(tables / "test.csv", index=False)
            pd.DataFrame([vars(epoch) for epoch in result.history]).to_csv(
                tables / "history.csv", index=False
            )
            mlflow.log_artifacts(str(tables), artifact_path="evaluation")
            for path in result.evaluation.plots.values():
                mlflow.log_artifact(str(path), artifact_path="plots")
            # The best weights as a plain state dict (loaded with weights_only=True): the
            # inference service rebuilds the network from config/resolved.json and these,
            # since Grad-CAM needs the module's layers, which the exported program flattens.
            mlflow.log_artifact(str(result.checkpoint), artifact_path=WEIGHTS_ARTIFACT_DIR)

            example = result.example_input
            with torch.no_grad():
                output = result.model(torch.from_numpy(example)).numpy()
            info = mlflow.pytorch.log_model(
                result.model,
                name=MODEL_ARTIFACT,
                signature=infer_signature(example, output),
                input_example=example,
                registered_model_name=config.name,
                # torch.export's program (MLflow's default outside Databricks): loading it
                # runs no pickled code, unlike the "pickle" format.
                serialization_format="pt2",
                pip_requirements=_pip_requirements(),
                metadata={
                    "outputs": "logits; apply a sigmoid per label",
                    "labels": list(config.data.labels),
                },
            )
            version = str(info.registered_model_version)
            client.set_registered_model_alias(config.name, CANDIDATE_ALIAS, version)
            client.set_model_version_tag(
                config.name, version, "medai.snapshot_hash", snapshot["content_hash"]
            )
            client.set_model_version_tag(
                config.name, version, "medai.labels", ",".join(config.data.labels)
            )
    return TrackedRun.registered(config, run_id, experiment_id, version, result)
