"""Training runs tracked in MLflow: parameters, metrics, evaluation, the model, its version.

:func:`train_tracked` runs :func:`medai.training.loop.train` inside an MLflow run of the
experiment named after the model and logs:

- provenance (:mod:`medai.training.provenance`): tags ``medai.version`` and, run from a
  git checkout, ``medai.git_commit`` / ``medai.git_dirty``; the snapshot's splits as MLflow
  dataset inputs (contexts ``training``, ``validation``, ``test``; digest: the manifest
  hash), so MLflow's Datasets view shows what the run read;
- parameters: the flattened configuration (``schedule.epochs``...), the snapshot's name,
  content hash and split sizes; tags ``medai.snapshot`` / ``medai.snapshot_hash``;
- the configuration the run was trained with, after any override by a notebook or the
  command line, as the run's one configuration artifact (``config/resolved.json``): the
  file it was read from is not logged, since an override would make it disagree;
- per-epoch ``train/loss``, ``val/loss``, ``val/auroc/<label>``, ``val/auroc/macro``,
  ``lr`` with ``step=epoch``;
- after each epoch, a checkpoint of the whole training state
  (:mod:`medai.training.checkpoints`: ``checkpoints/slot-0.pt`` and ``slot-1.pt``, in
  turn), from which :func:`resume_tracked` (``medai train --resume RUN_ID``) continues
  the same run after a crash or a kill: the configuration is the run's own
  ``config/resolved.json``, the epochs already logged are not logged again, and the run
  ends with the metrics, weights and registered version an uninterrupted run would have;
- each label's operating threshold, chosen on the validation split, as
  ``val/threshold/<label>``;
- the evaluation's metrics (``test/auroc/<label>``, ``test/auroc_low/<label>``...,
  :meth:`EvaluationResult.metrics`, without its thresholds: they are validation's), its
  table (``evaluation/test.csv``, per study as the service scores, with the per-image one
  in ``evaluation/test_images.csv`` and the interval warnings in
  ``evaluation/warnings.json``) and plots (``plots/*.png``), and the epoch history
  (``evaluation/history.csv``, with a ``val_auroc_<label>`` column per label), and the
  per-case test predictions keyed by manifest row (``evaluation/test_cases.csv``,
  :mod:`medai.training.case_predictions`), on which the gate compares it with the champion;
- the best weights as a state dict (``weights/best.pt``), from which the inference service
  rebuilds the network with ``config/resolved.json``;
- with ``[export] int8 = true`` (:mod:`medai.training.quantize`), the tag ``medai.int8``
  (``accepted`` or ``refused: <reason>``), the metrics ``int8/max_abs_prob_diff`` and
  ``int8/test_auroc_delta/<label>`` (int8 minus float on the test split) and, accepted,
  the model as ``serving/model-int8.onnx``, which the service may run on a CPU;
- with ``[export] bfloat16 = true`` (:mod:`medai.training.bfloat16`), the tag
  ``medai.bfloat16`` and the metrics ``bfloat16/max_abs_prob_diff`` and
  ``bfloat16/test_auroc_delta/<label>``;
- the best network as a ``torch.export`` program (``pt2``: loading it executes no pickled
  code) with two flavors (:mod:`medai.training.pyfunc`): ``pytorch`` returns logits,
  ``python_function`` a probability column per label and, asked, the positives at the
  validation thresholds; with a signature whose batch dimension is dynamic (``-1``) and an
  input example of two images (``torch.export`` would fix a batch dimension of 1 in the
  example to a constant), registered as a new version of the registered model
  ``config.name`` with the alias ``candidate`` (tagged with the snapshot hash, labels,
  medai version and commit), and audited (``model.register``) in the catalog the snapshot
  came from (:mod:`medai.training.registry`).

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
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import monai
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from medai.audit import actors
from medai.config import Settings, get_settings
from medai.errors import ResumeRefused
from medai.snapshots import load_snapshot
from medai.training import distributed, pyfunc
from medai.training.bfloat16 import BFLOAT16_TAG, Bfloat16Result
from medai.training.checkpoints import CHECKPOINT_ARTIFACT_DIR, Checkpoint, latest_checkpoint
from medai.training.config import ModelConfig, flatten
from medai.training.data import TrainingData, build_training_data
from medai.training.evaluation import ALL_SITES, EvaluationResult
from medai.training.loop import CHECKPOINT_NAME, EpochResult, TrainResult, train
from medai.training.provenance import (
    GIT_COMMIT_TAG,
    VERSION_TAG,
    log_snapshot_inputs,
    source_tags,
)
from medai.training.quantize import INT8_ARTIFACT, INT8_TAG, Int8Result
from medai.training.reference_stats import log_reference
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
    "load_run_config",
    "load_run_model",
    "log_bfloat16",
    "log_int8",
    "promote",
    "resume_tracked",
    "train_tracked",
    "validation_thresholds",
]

MODEL_ARTIFACT = "model"
WEIGHTS_ARTIFACT_DIR = "weights"  # holds best.pt (medai.training.loop.CHECKPOINT_NAME)
CONFIG_ARTIFACT = "config/resolved.json"  # the one configuration artifact of a run
WEIGHTS_ARTIFACT = f"{WEIGHTS_ARTIFACT_DIR}/{CHECKPOINT_NAME}"  # the best weights, a state dict
THRESHOLD_METRIC = "val/threshold/{label}"


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


def validation_thresholds(evaluation: EvaluationResult, labels: Sequence[str]) -> list[float]:
    """Each label's operating threshold (chosen on validation), NaN where there is none."""
    table = evaluation.table
    pooled = table[table["site"] == ALL_SITES] if "site" in table else table.iloc[0:0]
    values = []
    for label in labels:
        rows = pooled[pooled["label"] == label]
        values.append(float(rows["threshold"].iloc[0]) if len(rows) else math.nan)
    return values


def _test_metrics(evaluation: EvaluationResult) -> dict[str, float]:
    # The thresholds in the evaluation's metrics were chosen on validation, not test: they
    # are logged once, as val/threshold/<label>.
    return {k: v for k, v in evaluation.metrics("test").items() if "/threshold/" not in k}


def load_run_config(run_id: str, settings: Settings | None = None) -> ModelConfig:
    """The configuration a run was trained with (its ``config/resolved.json``).

    Raises
    ------
    ResumeRefused
        No such run, or it has no configuration artifact.
    ModelConfigError
        The logged configuration no longer validates.
    """
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from medai.errors import ModelConfigError
    from medai.tomlfile import format_validation_errors

    settings = settings or get_settings()
    uri = configure_mlflow(settings)
    with tempfile.TemporaryDirectory(prefix="medai-resume-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CONFIG_ARTIFACT, dst_path=tmp, tracking_uri=uri
            )
            text = Path(path).read_text("utf-8")
        except (MlflowException, OSError):
            raise ResumeRefused(
                f"no MLflow run {run_id!r} with a {CONFIG_ARTIFACT} in the tracking store "
                f"{uri}: give the run id `medai train` printed"
            ) from None
    try:
        return ModelConfig.model_validate(json.loads(text))
    except ValidationError as exc:
        raise ModelConfigError(format_validation_errors(f"run {run_id}", exc)) from None


def load_run_model(
    run_id: str, what: str, settings: Settings
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A registered run's resolved configuration and best weights (a state dict).

    What the inference service and ``medai models export`` rebuild a network from. The
    artifacts (no patient data) pass through a temporary folder, gone on return.

    Raises
    ------
    ModelUnavailable
        The run lacks either artifact, the configuration does not validate, or the weights
        file cannot be read; the message starts with ``what`` (e.g. "NAME version 3").
    """
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from medai.errors import ModelUnavailable

    uri = settings.resolved_mlflow_tracking_uri
    with tempfile.TemporaryDirectory(prefix="medai-model-") as tmp:
        try:
            config_path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CONFIG_ARTIFACT, dst_path=tmp, tracking_uri=uri
            )
            weights_path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=WEIGHTS_ARTIFACT, dst_path=tmp, tracking_uri=uri
            )
        except (MlflowException, OSError) as exc:
            raise ModelUnavailable(
                f"{what}: its run {run_id} lacks {CONFIG_ARTIFACT} or {WEIGHTS_ARTIFACT} "
                f"({type(exc).__name__}); it was trained by an older medai: retrain it"
            ) from None
        try:
            config = ModelConfig.model_validate(json.loads(Path(config_path).read_text("utf-8")))
        except (ValueError, ValidationError) as exc:
            raise ModelUnavailable(f"{what}: {CONFIG_ARTIFACT} is not valid: {exc}") from None
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad file
            raise ModelUnavailable(
                f"{what}: {WEIGHTS_ARTIFACT} cannot be read ({type(exc).__name__})"
            ) from None
    return config, state


def _resume_state(run_id: str, config: ModelConfig, settings: Settings) -> Checkpoint | None:
    """Check the run may be resumed; its newest checkpoint (None: it had none yet)."""
    from mlflow.exceptions import MlflowException

    uri = configure_mlflow(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run_id)
    if run.data.tags.get("medai.model") != config.name:
        raise ResumeRefused(f"run {run_id} is not a training run of the model {config.name}")
    if run.info.status == "FINISHED":
        raise ResumeRefused(
            f"run {run_id} finished: there is nothing to resume (train again for a new run)"
        )
    if run.data.params.get("train.world_size", "1") != "1":
        raise ResumeRefused("resuming is supported for single-process runs only")
    with tempfile.TemporaryDirectory(prefix="medai-resume-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT_DIR, dst_path=tmp, tracking_uri=uri
            )
        except (MlflowException, OSError):  # killed before its first checkpoint
            return None
        return latest_checkpoint(sorted(Path(local).glob("slot-*.pt")))


def resume_tracked(
    run_id: str,
    settings: Settings | None = None,
    progress: Callable[[EpochResult], None] | None = None,
    *,
    device: str | None = None,
    actor: str | None = None,
) -> TrackedRun:
    """Continue the MLflow run ``run_id`` from its last checkpoint, to the end.

    The configuration is the run's own; training goes on from the epoch after the newest
    checkpoint (from the start, in the same run, if it had none), then evaluates, logs and
    registers as :func:`train_tracked`. Single process only.

    Raises
    ------
    ResumeRefused
        No such run, a finished one, or one trained under ``torchrun``.
    """
    settings = settings or get_settings()
    if distributed.launched_by_torchrun():
        raise ResumeRefused("resuming is supported for single-process runs only (not torchrun)")
    config = load_run_config(run_id, settings)
    return train_tracked(
        config, settings, progress, device=device, actor=actor, resume_run_id=run_id
    )


def train_tracked(
    config: ModelConfig,
    settings: Settings | None = None,
    progress: Callable[[EpochResult], None] | None = None,
    *,
    device: str | None = None,
    actor: str | None = None,
    resume_run_id: str | None = None,
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
    resume_run_id
        Continue this run from its last checkpoint instead of starting a new one (see
        :func:`resume_tracked`, which also takes the configuration from the run).

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
        resume = None if resume_run_id is None else _resume_state(resume_run_id, config, settings)
        data = build_training_data(config, settings)
        if context.is_main:
            tracked = _train_logged(
                config,
                settings,
                progress,
                str(context.device),
                data,
                resume_run_id=resume_run_id,
                resume=resume,
            )
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


def _log_checkpoint(path: Path, epoch: int) -> None:
    mlflow.log_artifact(str(path), artifact_path=CHECKPOINT_ARTIFACT_DIR)


def _log_missing_epochs(client: MlflowClient, run_id: str, history: Sequence[EpochResult]) -> None:
    """Log the checkpoint's epochs whose metrics the killed run had not logged yet."""
    logged = {metric.step for metric in client.get_metric_history(run_id, "train/loss")}
    for result in history:
        if result.epoch not in logged:
            _log_epoch(result)


def _train_logged(
    config: ModelConfig,
    settings: Settings,
    progress: Callable[[EpochResult], None] | None,
    device: str,
    data: TrainingData,
    *,
    resume_run_id: str | None = None,
    resume: Checkpoint | None = None,
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
        with mlflow.start_run(experiment_id=experiment_id, run_id=resume_run_id) as run:
            run_id = run.info.run_id
            if resume_run_id is not None:
                # The run's parameters, inputs and configuration are logged already.
                if resume is not None:
                    _log_missing_epochs(
                        client, run_id, [EpochResult(**row) for row in resume.history]
                    )
                result = train(
                    config,
                    settings,
                    on_epoch,
                    device=device,
                    run_dir=work / "run",
                    data=data,
                    resume=resume,
                    on_checkpoint=_log_checkpoint,
                )
                # What the service watches its inputs and scores against (monitoring).
                log_reference(config, settings, data, result.model, result.device)
                return _finish_run(config, client, run_id, experiment_id, work, result)
            mlflow.log_params(flatten(config))
            provenance = source_tags()
            mlflow.set_tags(
                {
                    "medai.model": config.name,
                    "medai.snapshot": config.data.snapshot,
                    **provenance,
                }
            )
            # The manifest again (hash-checked): the training data keeps only its records.
            log_snapshot_inputs(
                load_snapshot(config.data.snapshot, settings=settings), data.snapshot
            )
            # ``config`` as trained, overrides included; never the file it came from.
            resolved = work / Path(CONFIG_ARTIFACT).name
            resolved.write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
            mlflow.log_artifact(str(resolved), artifact_path=str(Path(CONFIG_ARTIFACT).parent))

            result = train(
                config,
                settings,
                on_epoch,
                device=device,
                run_dir=work / "run",
                data=data,
                on_checkpoint=_log_checkpoint,
            )
            # What the service watches its inputs and scores against (monitoring).
            log_reference(config, settings, data, result.model, result.device)
            return _finish_run(config, client, run_id, experiment_id, work, result)


def _finish_run(
    config: ModelConfig,
    client: MlflowClient,
    run_id: str,
    experiment_id: str,
    work: Path,
    result: TrainResult,
) -> TrackedRun:
    """Inside the active run, after training: log the evaluation, the model, its version."""
    provenance = source_tags()
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
    labels = config.data.labels
    thresholds = validation_thresholds(result.evaluation, labels)
    mlflow.log_metrics(
        {
            "best_epoch": float(result.best_epoch),
            "epochs_run": float(len(result.history)),
            **{
                THRESHOLD_METRIC.format(label=label): value
                for label, value in zip(labels, thresholds, strict=True)
                if not math.isnan(value)
            },
            **_test_metrics(result.evaluation),
        }
    )
    tables = work / "evaluation"
    tables.mkdir()
    result.evaluation.table.to_csv(tables / "test.csv", index=False)
    if len(result.evaluation.image_table):  # test.csv is then per study
        result.evaluation.image_table.to_csv(tables / "test_images.csv", index=False)
    # Why an interval may not be trusted (few positives, zero width): with the table.
    (tables / "warnings.json").write_text(json.dumps(result.evaluation.warnings, indent=1))
    if result.test_cases is not None:  # the gate compares runs on these, case by case
        result.test_cases.to_csv(tables / "test_cases.csv", index=False)
    pd.DataFrame([epoch.row() for epoch in result.history]).to_csv(
        tables / "history.csv", index=False
    )
    mlflow.log_artifacts(str(tables), artifact_path="evaluation")
    for path in result.evaluation.plots.values():
        mlflow.log_artifact(str(path), artifact_path="plots")
    # The best weights as a plain state dict (loaded with weights_only=True): the
    # inference service rebuilds the network from config/resolved.json and these,
    # since Grad-CAM needs the module's layers, which the exported program flattens.
    mlflow.log_artifact(str(result.checkpoint), artifact_path=WEIGHTS_ARTIFACT_DIR)
    if result.int8 is not None:
        log_int8(result.int8, work)
    if result.bfloat16 is not None:
        log_bfloat16(result.bfloat16)

    info = pyfunc.log_model(
        result.model,
        name=MODEL_ARTIFACT,
        labels=labels,
        thresholds=thresholds,
        input_example=result.example_input,
        registered_model_name=config.name,
        pip_requirements=_pip_requirements(),
    )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(config.name, CANDIDATE_ALIAS, version)
    version_tags = {
        "medai.snapshot_hash": snapshot["content_hash"],
        "medai.labels": ",".join(labels),
        **{k: v for k, v in provenance.items() if k in (VERSION_TAG, GIT_COMMIT_TAG)},
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(config.name, version, key, value)
    _drop_checkpoints(run_id)
    return TrackedRun.registered(config, run_id, experiment_id, version, result)


def log_int8(result: Int8Result, work: Path) -> None:
    """Log what became of the run's int8 model, inside the active run.

    The tag ``medai.int8`` (``accepted`` or ``refused: <reason>``), the check's metrics
    (measured ones, refused or not) and, accepted, ``serving/model-int8.onnx`` (written
    through ``work``, a scratch folder).
    """
    # MLflow keeps tag values up to 8000 characters; a reason is a sentence or two.
    mlflow.set_tag(INT8_TAG, result.tag[:5000])
    metrics = result.metrics()
    if metrics:
        mlflow.log_metrics(metrics)
    if result.accepted and result.model is not None:
        path = work / Path(INT8_ARTIFACT).name
        path.write_bytes(result.model)
        mlflow.log_artifact(str(path), artifact_path=str(Path(INT8_ARTIFACT).parent))


def log_bfloat16(result: Bfloat16Result) -> None:
    """Log the check of the run's bfloat16 forward pass, inside the active run: the tag
    ``medai.bfloat16`` (``accepted`` or ``refused: <reason>``) and its measured metrics."""
    mlflow.set_tag(BFLOAT16_TAG, result.tag[:5000])
    metrics = result.metrics()
    if metrics:
        mlflow.log_metrics(metrics)


def _drop_checkpoints(run_id: str) -> None:
    """Delete a completed run's checkpoints: they only serve to resume it, and it is done.

    Each slot holds the weights, the best weights and the optimiser's moments (four times
    the model: 179 MB for the demo's ResNet-18), so two slots per run would grow the MLflow
    store, and every backup of it, by 360 MB a run. A store that cannot delete keeps them,
    with a warning.
    """
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        artifact_uri = mlflow.get_run(run_id).info.artifact_uri
        repository = get_artifact_repository(artifact_uri)
        repository.delete_artifacts(CHECKPOINT_ARTIFACT_DIR)  # type: ignore[no-untyped-call]
    except (MlflowException, OSError, NotImplementedError) as exc:
        logging.getLogger(__name__).warning(
            "the checkpoints of the completed run %s were kept (%s)",
            run_id,
            exc.__class__.__name__,
        )
