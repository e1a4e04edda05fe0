"""Training on a learnable synthetic campaign: test AUROC per finding, wall time, loader speed.

On a synthetic campaign (chest radiographs whose findings are drawn into the pixels),
ingested, labelled and frozen in a snapshot as a real one would be, trains the demo
configuration (``models/chest-xray-triage``) with ``train_tracked`` and prints:
  * per finding: test AUROC with its 95% bootstrap CI, against the target AUROC >= 0.90;
  * the training wall time (snapshot in, model registered in MLflow) against 10 minutes;
  * the data pipeline's throughput, images/s over the training split for one epoch and a
    second one, with cache "none" (decode every epoch), "memory" and "disk". The first
    epoch reads the store cold and fills the disk cache; "memory" fills its cache before
    it ("build s"); the second epoch is the steady state of a training run.

    python benchmarks/train.py [--studies 600] [--epochs N] [--device cpu] [--no-loader]

Without overrides, the run is the demo configuration exactly as the file gives it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "chest-xray-triage"
CAMPAIGN = REPO / "collection" / "example-campaign.toml"
TARGET_AUROC = 0.90
TARGET_SECONDS = 600.0


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def build_campaign(settings: Any, folder: Path, studies: int, seed: int, size: int) -> str:
    """Generate, ingest and label ``studies`` synthetic chest studies; freeze a snapshot."""
    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign
    from medai.collection.labels import import_label_sheet
    from medai.collection.outcomes import Offer
    from medai.collection.pipeline import IngestPipeline
    from medai.dicom.synth import generate
    from medai.snapshots import SnapshotQuery, create_snapshot

    started = time.perf_counter()
    # No CT: the snapshot takes chest radiographs only, so CT series would be dead weight.
    synth = generate(folder, studies=studies, seed=seed, image_size=size, ct_slices=0)
    generated = time.perf_counter()
    init_campaign(load_campaign(CAMPAIGN), settings)
    offers = [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    outcomes = IngestPipeline.from_settings(settings).ingest_many(offers)
    stored = sum(1 for outcome in outcomes if outcome.kind == "stored")
    ingested = time.perf_counter()
    for site, sheet in synth.label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="benchmark")
    info = create_snapshot(
        "chest-xray-triage",
        SnapshotQuery(modalities=("CR", "DX"), body_part="CHEST"),
        settings=settings,
        actor="benchmark",
    )
    done = time.perf_counter()
    counts = info.counts
    splits = ", ".join(
        f"{split} {counts[split]['instances']}" for split in ("train", "val", "test")
    )
    rates = {
        name: sum(getattr(r, name) for r in synth.study_records) / len(synth.study_records)
        for name in ("nodule", "effusion", "cardiomegaly")
    }
    print(
        f"campaign: {synth.studies} studies ({size} px) generated in {generated - started:.0f} s, "
        f"{stored} stored in {ingested - generated:.0f} s, labelled and frozen in "
        f"{done - ingested:.0f} s"
    )
    print(
        f"snapshot {info.name}: {splits} instances; prevalence "
        + ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
    )
    return str(info.name)


def train(config: Any, settings: Any, device: str | None) -> tuple[Any, float]:
    """Train and register ``config``, printing each epoch; the run and its wall time."""
    from medai.training.loop import EpochResult
    from medai.training.tracking import train_tracked

    def on_epoch(result: EpochResult) -> None:
        print(
            f"  epoch {result.epoch:>2}: train loss {result.train_loss:.4f}  val loss "
            f"{_fmt(result.val_loss)}  val AUROC {_fmt(result.val_auroc)}  "
            f"{result.seconds:.0f} s{'  *' if result.best else ''}",
            flush=True,
        )

    started = time.perf_counter()
    tracked = train_tracked(config, settings, on_epoch, device=device)
    return tracked, time.perf_counter() - started


def report_auroc(tracked: Any, seconds: float) -> bool:
    """Print the pooled test AUROC table and the wall time; whether both targets are met."""
    result = tracked.result
    table = result.evaluation.table
    pooled = table[table["site"] == "all"]
    print(
        f"\n{'finding':<14}{'n':>5}{'pos':>5}{'AUROC':>8}{'95% CI':>15}"
        f"   target AUROC >= {TARGET_AUROC:.2f}"
    )
    ok = True
    for row in pooled.itertuples(index=False):
        passed = not math.isnan(float(row.auroc)) and float(row.auroc) >= TARGET_AUROC
        ok &= passed
        ci = f"{_fmt(float(row.auroc_low))}-{_fmt(float(row.auroc_high))}"
        print(
            f"{row.label!s:<14}{row.n:>5}{row.n_positive:>5}{_fmt(float(row.auroc)):>8}"
            f"{ci:>15}   {'pass' if passed else 'FAIL'}"
        )
    in_time = seconds < TARGET_SECONDS
    print(
        f"\nbest epoch {result.best_epoch} of {len(result.history)} run "
        f"({'stopped early' if result.stopped_early else 'all epochs'}) on {result.device}"
    )
    print(
        f"training wall time: {seconds:.0f} s (target < {TARGET_SECONDS:.0f} s): "
        f"{'pass' if in_time else 'FAIL'}"
    )
    print(f"registered {tracked.model_name} version {tracked.model_version} (alias candidate)")
    return ok and in_time


def loader_throughput(config: Any, settings: Any, caches: list[str]) -> None:
    """Iterate the training loader for two epochs per cache; print images/s side by side."""
    from medai.training.data import IMAGE_KEY, build_training_data

    print(
        f"\ndata pipeline, training split, batch {config.schedule.batch_size}, "
        f"{config.transforms.image_size[0]} px, {config.data.num_workers} workers:"
    )
    print(f"{'cache':<8}{'build s':>9}{'epoch 1 img/s':>15}{'epoch 2 img/s':>15}")
    rates: dict[str, float] = {}
    for cache in caches:
        variant = config.model_copy(
            update={"data": config.data.model_copy(update={"cache": cache})}
        )
        started = time.perf_counter()
        data = build_training_data(variant, settings)  # "memory" fills its cache here
        built = time.perf_counter() - started
        epoch_rates = []
        for _ in range(2):
            started = time.perf_counter()
            images = sum(len(batch[IMAGE_KEY]) for batch in data.loaders["train"])
            epoch_rates.append(images / (time.perf_counter() - started))
        rates[cache] = epoch_rates[1]
        print(f"{cache:<8}{built:>9.1f}{epoch_rates[0]:>15.1f}{epoch_rates[1]:>15.1f}")
    if "none" in rates:
        for cache in (c for c in caches if c != "none"):
            print(f"{cache} / none, second epoch: {rates[cache] / rates['none']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=600, help="synthetic chest studies")
    parser.add_argument("--seed", type=int, default=11, help="seed of the synthetic campaign")
    parser.add_argument(
        "--image-size", type=int, default=None, help="synthetic image size (default: the model's)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override schedule.epochs")
    parser.add_argument("--lr", type=float, default=None, help="override optimizer.lr")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if any)")
    parser.add_argument(
        "--caches", default="none,memory,disk", help="caches for the loader throughput"
    )
    parser.add_argument("--no-loader", action="store_true", help="skip the loader throughput")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medai-bench-train-"))
    home = work / "home"
    # A fresh home, and none of the caller's MEDAI_* settings.
    for name in [n for n in os.environ if n.startswith("MEDAI_")]:
        del os.environ[name]
    os.environ["MEDAI_HOME"] = str(home)
    import torch

    from medai.config import Settings, get_settings
    from medai.training.config import load_model_config

    get_settings.cache_clear()
    settings = Settings(home=home)
    config = load_model_config(MODEL_DIR)
    overrides = []
    if args.epochs is not None:
        config = config.model_copy(
            update={"schedule": config.schedule.model_copy(update={"epochs": args.epochs})}
        )
        overrides.append(f"epochs={args.epochs}")
    if args.lr is not None:
        config = config.model_copy(
            update={"optimizer": config.optimizer.model_copy(update={"lr": args.lr})}
        )
        overrides.append(f"lr={args.lr}")
    size = args.image_size or config.transforms.image_size[0]
    try:
        print(
            f"{config.name}: {config.network.name}, {config.transforms.image_size[0]} px, "
            f"{config.schedule.epochs} epochs (patience {config.schedule.patience}), batch "
            f"{config.schedule.batch_size}, lr {config.optimizer.lr}"
            f"{' [overrides: ' + ', '.join(overrides) + ']' if overrides else ' [demo config]'}"
        )
        print(
            f"{os.cpu_count()} CPU cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; CUDA: {torch.cuda.is_available()}; in {work}\n"
        )
        build_campaign(settings, work / "synth", args.studies, args.seed, size)
        print(f"\ntraining {config.name} ...", flush=True)
        tracked, seconds = train(config, settings, args.device)
        ok = report_auroc(tracked, seconds)
        if not args.no_loader:
            loader_throughput(config, settings, [c for c in args.caches.split(",") if c])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
