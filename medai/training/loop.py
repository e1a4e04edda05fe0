"""The training loop: a model configuration in, the best network and its evaluation out.

:func:`train` knows nothing of MLflow (:mod:`medai.training.tracking` wraps it), so a
notebook calls the same function as ``medai train``. Running the network over a split, the
masked loss and the evaluation settings are :mod:`medai.training.prediction`.

- Seeds: :func:`medai.training.transforms.seed_everything` before the network is built,
  seeded transforms and shuffling (:mod:`medai.training.data`): one seed, one run.
- Network: :func:`medai.training.networks.network_from_config` (a named network or a
  MONAI ``_target_`` entry), the one function the inference service rebuilds it with.
- Loss: binary cross-entropy on logits, masked where a label is unknown (NaN in the
  manifest), averaged over the known labels of the batch; or the ``[loss]`` ``_target_``
  loss, elementwise, under the same mask (:class:`medai.training.config.LossConfig`).
- AdamW (or the ``[optimizer]`` ``_target_``), cosine annealing over the configured
  epochs (or a constant rate).
- Checkpoints (:mod:`medai.training.checkpoints`): after each epoch the whole state of
  the run (weights, best weights, optimiser, scheduler, counters, history, every random
  state) is written and handed to ``on_checkpoint``; ``resume=`` continues from one and
  ends as the uninterrupted run would have (single process).
- Mixed precision for the training steps (:mod:`medai.training.precision`): float16
  autocast with a gradient scaler on CUDA, bfloat16 on a CPU with native bfloat16 units
  (2-D networks then in channels-last); validation, test and export stay float32.
- After each epoch: validation loss, each label's AUROC and their macro mean (over the
  labels with both classes in the validation set). Early stopping watches the macro
  AUROC; when no label has both classes there, it watches the validation loss instead.
  The best epoch's weights are saved and restored.
- Finally :func:`medai.training.evaluation.evaluate` on the best weights: thresholds from
  validation, test AUROC with bootstrap CIs, pooled and per site, with plots.
- With ``[export] int8 = true``, then :func:`medai.training.quantize.quantize_trained`:
  an int8 ONNX model of the best network, calibrated on validation images and accepted
  only if it agrees with the network on the test split (``TrainResult.int8``); its
  refusal or failure never fails the run. Rank 0 only. Likewise ``[export] bfloat16``:
  :func:`medai.training.bfloat16.check_bfloat16` (``TrainResult.bfloat16``).
- Under ``torchrun`` (a process group, :mod:`medai.training.distributed`) the network is
  wrapped in DistributedDataParallel and each rank trains on its shard; the epoch's
  training loss is summed over the ranks, validation and test predictions are made on
  shards and gathered back into manifest order, so every metric and early-stopping
  decision is the one a single process would reach with the same weights (up to the
  float32 rounding of differently sized batches), and rank 0 alone evaluates the test
  set (the others receive its table).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from medai.config import Settings
from medai.training import distributed, targets
from medai.training.bfloat16 import Bfloat16Result, check_bfloat16
from medai.training.case_predictions import case_predictions
from medai.training.checkpoints import (
    Checkpoint,
    capture_rng,
    config_digest,
    restore_rng,
    write_checkpoint,
)
from medai.training.config import ModelConfig
from medai.training.data import (
    IMAGE_KEY,
    LABEL_KEY,
    TrainingData,
    build_training_data,
)
from medai.training.evaluation import EvaluationResult
from medai.training.networks import network_from_config
from medai.training.precision import training_autocast, training_dtype, uses_channels_last
from medai.training.prediction import (
    evaluate_predictions,
    label_aurocs,
    masked_bce_with_logits,
    predict,
)
from medai.training.quantize import Int8Result, quantize_trained
from medai.training.transforms import seed_everything

__all__ = ["CHECKPOINT_NAME", "EpochResult", "TrainResult", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "best.pt"


@dataclass(frozen=True)
class EpochResult:
    """What one epoch gave.

    ``val_auroc`` is the macro mean of ``val_label_auroc`` (each label's validation AUROC,
    NaN for a label without both classes); NaN when no label has both classes.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    lr: float
    seconds: float
    best: bool
    val_label_auroc: Mapping[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``{name: value}`` for ``mlflow.log_metrics(..., step=epoch)`` (NaNs left out).

        ``val/auroc/<label>`` per label beside ``val/auroc/macro``: a macro mean that
        holds still can hide one label improving while another degrades.
        """
        values = {
            "train/loss": self.train_loss,
            "val/loss": self.val_loss,
            "val/auroc/macro": self.val_auroc,
            **{f"val/auroc/{label}": v for label, v in self.val_label_auroc.items()},
            "lr": self.lr,
            "epoch_seconds": self.seconds,
        }
        return {k: v for k, v in values.items() if not math.isnan(v)}

    def row(self) -> dict[str, float | int | bool]:
        """One flat row of the epoch history table (``val_auroc_<label>`` per label)."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_auroc": self.val_auroc,
            **{f"val_auroc_{label}": v for label, v in self.val_label_auroc.items()},
            "lr": self.lr,
            "seconds": self.seconds,
            "best": self.best,
        }


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes
    ----------
    model
        The network with the best epoch's weights, on the CPU, in eval mode; it returns
        logits (apply a sigmoid for probabilities).
    history
        One :class:`EpochResult` per epoch run.
    best_epoch
        The epoch whose weights ``model`` holds.
    stopped_early
        Whether early stopping ended the run before the last epoch.
    monitor
        ``"val/auroc/macro"`` or ``"val/loss"`` (see the module docstring).
    evaluation
        The test evaluation of the best weights.
    checkpoint
        The best weights' state dict file.
    run_dir
        The folder of the checkpoint and plots.
    snapshot
        The snapshot's catalog record (name, content hash, counts).
    example_input
        The model's input example: two noise images, ``(2, 1, H, W)`` float32 in [0, 1].
    test_cases
        Per-case test predictions keyed by manifest row
        (:func:`medai.training.case_predictions.case_predictions`); None without the ids.
    int8
        The int8 model and its check (:mod:`medai.training.quantize`) when the
        configuration asks for one (``[export] int8``), on rank 0; None otherwise.
    bfloat16
        The check of the bfloat16 forward pass (:mod:`medai.training.bfloat16`) when the
        configuration asks for it (``[export] bfloat16``), on rank 0; None otherwise.
    """

    config: ModelConfig
    model: nn.Module
    history: list[EpochResult]
    best_epoch: int
    stopped_early: bool
    monitor: str
    evaluation: EvaluationResult
    checkpoint: Path
    run_dir: Path
    snapshot: dict[str, Any]
    example_input: npt.NDArray[np.float32]
    device: str = "cpu"
    test_cases: pd.DataFrame | None = None
    int8: Int8Result | None = None
    bfloat16: Bfloat16Result | None = None


def _has_both_classes(records: list[dict[str, Any]], n_labels: int) -> bool:
    if not records:
        return False
    y = np.stack([np.asarray(r[LABEL_KEY], dtype=np.float64) for r in records])
    for column in range(n_labels):
        known = y[~np.isnan(y[:, column]), column]
        if known.size and 0 < known.sum() < known.size:
            return True
    return False


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(config: ModelConfig) -> LossFunction:
    """The training loss of ``config``: masked BCE, or its ``_target_`` loss under the mask."""
    spec = config.loss.target
    if spec is None:
        return masked_bce_with_logits
    elementwise = targets.build_loss(spec, num_labels=len(config.data.labels))

    def masked(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(truth)
        losses = elementwise(logits.float(), torch.nan_to_num(truth, nan=0.0))
        return (losses * known).sum() / known.sum().clamp(min=1)

    return masked


def build_optimizer(config: ModelConfig, parameters: Any) -> torch.optim.Optimizer:
    """AdamW with ``lr`` and ``weight_decay``, or the ``[optimizer]`` ``_target_``."""
    spec = config.optimizer.target
    if spec is not None:
        return targets.build_optimizer(spec, parameters)
    return torch.optim.AdamW(
        parameters, lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )


def _chains(loaders: Mapping[str, Any]) -> dict[str, Any]:
    return {split: getattr(loader.dataset, "transform", None) for split, loader in loaders.items()}


def train(
    config: ModelConfig,
    settings: Settings | None = None,
    progress: Callable[[EpochResult], None] | None = None,
    *,
    device: str | None = None,
    run_dir: str | Path | None = None,
    data: TrainingData | None = None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
) -> TrainResult:
    """Train the model of ``config`` on its snapshot and evaluate the best epoch.

    Parameters
    ----------
    config
        The model configuration (:func:`medai.training.config.load_model_config`).
    settings
        Where the catalog, store and cache are; :func:`medai.config.get_settings` if None.
    progress
        Called after each epoch with its :class:`EpochResult` (a progress bar, MLflow).
    device
        ``"cuda"``, ``"cpu"``...; CUDA when available if None (under ``torchrun``,
        ``cuda:LOCAL_RANK``: :func:`medai.training.distributed.resolve_device`).
    run_dir
        Folder for the checkpoint and plots; a new temporary folder if None.
    data
        Prebuilt datasets (:func:`medai.training.data.build_training_data`), e.g. to
        reuse a memory cache across runs in a notebook.
    resume
        A checkpoint of this configuration to continue from (single process only).
    on_checkpoint
        Called with each epoch's checkpoint file and epoch, after the epoch and before
        ``progress`` (e.g. to log it to MLflow); checkpoints are written only when given
        or when ``resume`` is.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        ``resume`` is for another configuration, or asked for under ``torchrun``.
    """
    digest = config_digest(config.model_dump(mode="json"))
    if resume is not None:
        if resume.config_digest != digest:
            raise ValueError(
                "the checkpoint was written for another configuration: resume with the "
                "run's own configuration (config/resolved.json)"
            )
        if distributed.world_size() > 1 or resume.world_size != 1:
            raise ValueError("resuming is supported for single-process runs only")
    seed_everything(config.seed)
    data = data or build_training_data(config, settings)
    target = distributed.resolve_device(device)
    main = distributed.is_main_process()
    out_dir = (
        Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="medai-train-"))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # One file per rank: ranks may share ``run_dir`` (a notebook under torchrun).
    checkpoint = out_dir / (CHECKPOINT_NAME if main else f"best.rank{distributed.rank()}.pt")
    labels = config.data.labels

    # Seed again right before building the network, so its initial weights do not depend
    # on how much randomness building the data consumed.
    seed_everything(config.seed)
    # A resumed run takes its weights from the checkpoint, not from [network] weights.
    net = network_from_config(config, len(labels), initial_weights=resume is None).to(target)
    dtype = training_dtype(target, config.schedule.precision, config.transforms.image_size)
    layout = (
        torch.channels_last
        if uses_channels_last(dtype, len(config.transforms.image_size))
        else torch.contiguous_format
    )
    net = net.to(memory_format=layout)
    # The wrapper averages the gradients over the ranks (and starts every rank from rank
    # 0's weights); ``net`` itself is what is evaluated, saved and returned.
    model: nn.Module = (
        DistributedDataParallel(net, device_ids=[target] if target.type == "cuda" else None)
        if distributed.world_size() > 1
        else net
    )
    optimizer = build_optimizer(config, model.parameters())
    loss_fn = build_loss(config)
    epochs = config.schedule.epochs
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        if config.schedule.lr_schedule == "cosine"
        else None
    )
    # bfloat16 has float32's exponent range: only float16 needs its loss scaled.
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    monitor = (
        "val/auroc/macro" if _has_both_classes(data.records["val"], len(labels)) else "val/loss"
    )
    if monitor == "val/loss" and main:
        logger.warning("no label has both classes in the validation split; early stopping on loss")

    history: list[EpochResult] = []
    best_score, best_epoch, stale = -math.inf, 0, 0
    stopped_early = False
    best_state: dict[str, torch.Tensor] = {}
    start = 1
    if resume is not None:
        if resume.monitor != monitor:
            raise ValueError(f"the checkpoint monitored {resume.monitor}, this run {monitor}")
        net.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        if scheduler is not None and resume.scheduler is not None:
            scheduler.load_state_dict(resume.scheduler)
        scaler.load_state_dict(resume.scaler)
        best_score, best_epoch, stale = resume.best_score, resume.best_epoch, resume.stale
        stopped_early = resume.stopped_early
        history = [EpochResult(**row) for row in resume.history]
        best_state = resume.best_model
        if best_state:
            torch.save(best_state, checkpoint)
        restore_rng(resume.rng, data.loaders, _chains(data.loaders))
        start = resume.epoch + 1
    keep_checkpoints = on_checkpoint is not None or resume is not None
    train_loader = data.loaders["train"]
    sampler = getattr(train_loader, "sampler", None)
    for epoch in range(start, epochs + 1):
        if stopped_early:
            break
        started = time.perf_counter()
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)  # a new permutation each epoch, the same on every rank
        model.train()
        total, count = 0.0, 0
        lr = float(optimizer.param_groups[0]["lr"])
        for batch in train_loader:
            images = batch[IMAGE_KEY].to(target, non_blocking=True)
            if layout is torch.channels_last:
                images = images.contiguous(memory_format=layout)
            targets = batch[LABEL_KEY].to(target, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with training_autocast(target, dtype):
                logits = model(images)
            loss = loss_fn(logits.float(), targets)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(images)
            count += len(images)
        if scheduler is not None:
            scheduler.step()
        summed, seen = distributed.all_reduce_sum([total, count], target)
        distributed.broadcast_buffers(net)
        val_true, val_prob, _, val_loss = predict(
            net, data.loaders["val"], target, n_labels=len(labels)
        )
        by_label = dict(zip(labels, label_aurocs(val_true, val_prob), strict=True))
        known = [v for v in by_label.values() if not math.isnan(v)]
        val_auc = float(np.mean(known)) if known else math.nan  # as macro_auroc
        score = val_auc if monitor == "val/auroc/macro" else -val_loss
        # NaN (e.g. an empty batch of known labels) never counts as an improvement.
        improved = distributed.broadcast_object(
            not math.isnan(score) and (best_epoch == 0 or score > best_score)
        )
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            torch.save(net.state_dict(), checkpoint)
            if keep_checkpoints:
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
        result = EpochResult(
            epoch=epoch,
            train_loss=summed / max(seen, 1),
            val_loss=val_loss,
            val_auroc=val_auc,
            lr=lr,
            seconds=time.perf_counter() - started,
            best=improved,
            val_label_auroc=by_label,
        )
        history.append(result)
        patience = config.schedule.patience
        stopped_early = bool(patience and stale >= patience and epoch < epochs)
        if keep_checkpoints and main:
            state = Checkpoint(
                epoch=epoch,
                model={k: v.detach().cpu() for k, v in net.state_dict().items()},
                best_model=best_state,
                optimizer=optimizer.state_dict(),
                scheduler=None if scheduler is None else scheduler.state_dict(),
                scaler=scaler.state_dict(),
                best_score=best_score,
                best_epoch=best_epoch,
                stale=stale,
                stopped_early=stopped_early,
                monitor=monitor,
                history=[
                    asdict(item) | {"val_label_auroc": dict(item.val_label_auroc)}
                    for item in history
                ],
                rng=capture_rng(data.loaders, _chains(data.loaders)),
                config_digest=digest,
                world_size=distributed.world_size(),
            )
            path = write_checkpoint(state, out_dir / "checkpoints")
            if on_checkpoint is not None:
                on_checkpoint(path, epoch)
        if progress is not None and main:
            progress(result)
        if stopped_early:
            break

    if best_epoch == 0:  # every epoch's score was NaN: keep the last weights
        best_epoch = history[-1].epoch
        torch.save(net.state_dict(), checkpoint)
    net.load_state_dict(torch.load(checkpoint, map_location=target, weights_only=True))

    val_true, val_prob, _, _ = predict(net, data.loaders["val"], target, n_labels=len(labels))
    test_true, test_prob, test_sites, _ = predict(
        net, data.loaders["test"], target, n_labels=len(labels)
    )
    tests, vals = data.test_cases, data.val_cases
    evaluation = evaluate_predictions(
        config,
        val_true,
        val_prob,
        test_true,
        test_prob,
        test_sites,
        out_dir / "plots",
        # Patients for the patient-level bootstrap, studies for the study-level headline.
        test_patients=None if tests is None else tests["patient"].tolist(),
        test_studies=None if tests is None else tests["study_uid"].tolist(),
        val_studies=None if vals is None else vals["study_uid"].tolist(),
    )
    # The input example MLflow stores with the model: noise of the input's shape and range,
    # never a real image (pixels can carry burned-in identifiers). Two images, not one:
    # MLflow exports the model with torch.export, which fixes a dimension of size 1 in the
    # example to a constant; with 2 the batch dimension stays dynamic.
    shape = (2, 1, *config.transforms.image_size)
    example = np.random.default_rng(config.seed).random(shape, dtype=np.float32)
    net = net.cpu().eval().to(memory_format=torch.contiguous_format)
    # After the test predictions, on the CPU network the service will rebuild; seconds.
    int8 = quantize_trained(net, config, data, settings) if config.export.int8 and main else None
    bfloat16 = (
        check_bfloat16(net, config, data, settings) if config.export.bfloat16 and main else None
    )
    return TrainResult(
        config=config,
        model=net,
        history=history,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        monitor=monitor,
        evaluation=evaluation,
        checkpoint=checkpoint,
        run_dir=out_dir,
        snapshot=data.snapshot,
        example_input=example,
        device=str(target),
        test_cases=(
            None
            if data.test_cases is None
            else case_predictions(data.test_cases, labels, test_true, test_prob)
        ),
        int8=int8,
        bfloat16=bfloat16,
    )
