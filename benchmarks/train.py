"""Training against a known ceiling: model AUROC per finding beside the ideal observer's.

On a synthetic campaign (chest radiographs drawn from latent findings, sheets with each
site's label noise; :mod:`medai.dicom.synth`), ingested, labelled and frozen in a snapshot
as a real one would be, trains the demo configuration (``models/chest-xray-triage``) with
``train_tracked`` and prints:
  * per finding: test AUROC with its 95% CI, the ideal observer's AUROC (the ceiling the
    generator computes from its own latent values against the noisy labels) and their
    ratio, against the target ratio >= 0.90; then the same per site;
  * with ``--leave-one-site-out``: for each site, a model trained on the other sites and
    tested on every study of the held-out site, beside that site's ideal AUROC;
  * the ideal observer's AUROC on the same test studies, and the model's ratio to it: a
    like-for-like ceiling, since a test split that happens to hold hard cases lowers both;
  * with ``--splits K``: K trainings on K patient splits of the same campaign (snapshot
    seeds), each printed, then the mean AUROC and ratios per finding; a single split's
    test set of ~90 studies moves the AUROC by about +-0.05 on its own;
  * the training wall time (snapshot in, model registered in MLflow) against 15 minutes;
  * the data pipeline's throughput, images/s over the training split for one epoch and a
    second one, with cache "none" (decode every epoch), "memory" and "disk".

    python benchmarks/train.py [--studies 600] [--difficulty hard] [--splits K]
        [--split-seed S] [--epochs N] [--device cpu] [--leave-one-site-out] [--no-loader]
        [--json OUT]

``--json OUT`` writes ``{"findings": {NAME: {"auroc", "ci_low", "ci_high", "ideal_auroc",
"ratio", "ideal_auroc_test_studies", "ratio_test_studies", "n", "n_positive", "by_site":
{...}}}, "wall_s", "difficulty", "splits": [...], "mean": {...}, ...}`` (the first split at the
top level; and ``"leave_one_site_out"`` when run). Without overrides, the run is the demo
configuration exactly as the file gives it.
"""

from __future__ import annotations

import argparse
import json
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
TARGET_RATIO = 0.90  # of the ideal observer's AUROC
TARGET_SECONDS = 900.0


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _json_ready(value: Any) -> Any:
    """``value`` with NaN as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_campaign(
    settings: Any, folder: Path, studies: int, seed: int, size: int, difficulty: str
) -> tuple[dict[str, Any], list[str]]:
    """Generate, ingest and label ``studies`` synthetic chest studies.

    Returns the generator's ground truth and the site ids.
    """
    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign
    from medai.collection.labels import import_label_sheet
    from medai.collection.outcomes import Offer
    from medai.collection.pipeline import IngestPipeline
    from medai.dicom.synth import generate

    started = time.perf_counter()
    # No CT: the snapshot takes chest radiographs only, so CT series would be dead weight.
    synth = generate(
        folder, studies=studies, seed=seed, image_size=size, ct_slices=0, difficulty=difficulty
    )
    generated = time.perf_counter()
    init_campaign(load_campaign(CAMPAIGN), settings)
    offers = [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    outcomes = IngestPipeline.from_settings(settings).ingest_many(offers)
    stored = sum(1 for outcome in outcomes if outcome.kind == "stored")
    ingested = time.perf_counter()
    for site, sheet in synth.label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="benchmark")
    done = time.perf_counter()
    rates = {
        name: sum(getattr(r, name) for r in synth.study_records) / len(synth.study_records)
        for name in ("nodule", "effusion", "cardiomegaly")
    }
    print(
        f"campaign: {synth.studies} studies ({size} px) generated in {generated - started:.0f} s, "
        f"{stored} stored in {ingested - generated:.0f} s, labelled in "
        f"{done - ingested:.0f} s; prevalence "
        + ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
    )
    assert synth.ground_truth is not None  # generate() always writes it
    truth = json.loads(synth.ground_truth.read_text(encoding="utf-8"))
    ceilings = ", ".join(f"{k} {v['ideal_auroc']:.3f}" for k, v in truth["findings"].items())
    print(f"difficulty {synth.difficulty}: ideal observer AUROC {ceilings}")
    return truth, sorted(synth.label_sheets)


def freeze_snapshot(settings: Any, split_seed: int) -> str:
    """Freeze the campaign's chest radiographs, split under ``split_seed``; the name."""
    from medai.snapshots import SnapshotQuery, create_snapshot

    info = create_snapshot(
        f"chest-xray-triage-s{split_seed}",
        SnapshotQuery(modalities=("CR", "DX"), body_part="CHEST"),
        settings=settings,
        actor="benchmark",
        seed=split_seed,
    )
    counts = info.counts
    splits = ", ".join(
        f"{split} {counts[split]['instances']}" for split in ("train", "val", "test")
    )
    print(f"snapshot {info.name} (split seed {split_seed}): {splits} instances")
    return str(info.name)


def ideal_on_test_studies(settings: Any, snapshot: str, truth: dict[str, Any]) -> dict[str, float]:
    """The ideal observer's AUROC per finding on this snapshot's test studies.

    The same studies the model is tested on, so the ratio of the two compares like with
    like: a test split that happens to hold hard cases lowers both. The ground truth is
    keyed by the original StudyInstanceUID; the snapshot holds the pseudonymous one, which
    the campaign key recomputes.
    """
    from medai.catalog import create_engine_for
    from medai.collection.key_guard import campaign_key
    from medai.collection.pseudonymize import Pseudonymizer
    from medai.dicom.synth.ideal_observer import auroc
    from medai.snapshots import load_snapshot

    engine = create_engine_for(settings.resolved_database_url)
    try:
        pseudonymizer = Pseudonymizer(campaign_key(settings, engine))
    finally:
        engine.dispose()
    by_pseudonym = {pseudonymizer.uid(uid): study for uid, study in truth["studies"].items()}
    manifest = load_snapshot(snapshot, settings)
    test_uids = sorted(set(manifest.loc[manifest["split"] == "test", "study_uid"]))
    studies = [by_pseudonym[uid] for uid in test_uids]
    return {
        finding: auroc(
            [s["ideal_score"][finding] for s in studies],
            [float(s["label"][finding]) for s in studies],
        )
        for finding in truth["findings"]
    }


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


def _entry(auroc: float, low: float, high: float, ideal: float | None) -> dict[str, Any]:
    ratio = auroc / ideal if ideal and not math.isnan(auroc) else math.nan
    return {
        "auroc": auroc,
        "ci_low": low,
        "ci_high": high,
        "ideal_auroc": ideal,
        "ratio": ratio,
    }


def _row(name: str, entry: dict[str, Any]) -> str:
    ci = f"{_fmt(entry['ci_low'])}-{_fmt(entry['ci_high'])}"
    ideal = entry["ideal_auroc"]
    return (
        f"{name:<26}{entry['n']:>5}{entry['n_positive']:>5}{_fmt(entry['auroc']):>8}{ci:>14}"
        f"{_fmt(ideal if ideal is not None else math.nan):>8}{_fmt(entry['ratio']):>7}"
    )


_HEADER = f"{'':<26}{'n':>5}{'pos':>5}{'AUROC':>8}{'95% CI':>14}{'ideal':>8}{'ratio':>7}"


def compare_with_ceiling(
    tracked: Any, truth: dict[str, Any], paired: dict[str, float] | None = None
) -> dict[str, Any]:
    """Test AUROC per finding (pooled and per site) beside the ideal observer's; printed.

    ``paired``: the ideal observer's AUROC on the same test studies, printed after the
    table with the model's ratio to it.
    """
    table = tracked.result.evaluation.table
    findings: dict[str, Any] = {}
    print(f"\ntest AUROC against the ideal observer (target ratio >= {TARGET_RATIO:.2f})")
    print(_HEADER)
    for row in table[table["site"] == "all"].itertuples(index=False):
        ceiling = truth["findings"][str(row.label)]
        entry = _entry(
            float(row.auroc), float(row.auroc_low), float(row.auroc_high), ceiling["ideal_auroc"]
        )
        entry.update(n=int(row.n), n_positive=int(row.n_positive), by_site={})
        if paired is not None:
            same = paired[str(row.label)]
            entry["ideal_auroc_test_studies"] = same
            entry["ratio_test_studies"] = entry["auroc"] / same if same else math.nan
        findings[str(row.label)] = entry
        print(_row(str(row.label), entry))
    for row in table[table["site"] != "all"].itertuples(index=False):
        site_ceiling = truth["findings"][str(row.label)]["by_site"].get(str(row.site), {})
        entry = _entry(
            float(row.auroc),
            float(row.auroc_low),
            float(row.auroc_high),
            site_ceiling.get("ideal_auroc"),
        )
        entry.update(n=int(row.n), n_positive=int(row.n_positive))
        findings[str(row.label)]["by_site"][str(row.site)] = entry
        print(_row(f"  {row.label} @ {row.site}", entry))
    if paired is not None:
        print("the ideal observer on the same test studies (a like-for-like ceiling):")
        for name, entry in findings.items():
            print(
                f"  {name:<24}ideal {_fmt(entry['ideal_auroc_test_studies'])}  model "
                f"{_fmt(entry['auroc'])}  ratio {_fmt(entry['ratio_test_studies'])}"
            )
    return findings


def external_test(
    tracked: Any, config: Any, folder: Path, studies: int, seed: int, size: int, difficulty: str
) -> dict[str, Any]:
    """The trained model on an independent synthetic campaign of new patients; printed.

    A snapshot's test split holds ~90 studies, whose AUROC moves by about +-0.05 from one
    split to the next. A second campaign from the same generator (another seed: other
    patients, anatomy and findings) scored as the service scores (maximum over a study's
    images) gives a far tighter estimate, beside the ideal observer on the same studies.
    The files are read as they are (pixels only; they are never ingested) and deleted.
    """
    import numpy as np
    import torch

    from medai.dicom.synth import generate
    from medai.dicom.synth.ideal_observer import auroc
    from medai.training.evaluation.bootstrap import bootstrap_auroc
    from medai.training.reader import LoadDicomFromStore
    from medai.training.transforms import build_transforms

    synth = generate(
        folder, studies=studies, seed=seed, image_size=size, ct_slices=0, difficulty=difficulty
    )
    assert synth.ground_truth is not None
    truth = json.loads(synth.ground_truth.read_text(encoding="utf-8"))["studies"]
    chain = build_transforms(config.transforms, train=False, loader=LoadDicomFromStore(["image"]))
    model = tracked.result.model.eval()
    labels = list(config.data.labels)
    study_scores: dict[str, Any] = {}
    paths = [
        (path, str(record.study_instance_uid))
        for record in synth.study_records
        for path in record.files
        if record.modality in ("CR", "DX")
    ]
    for start in range(0, len(paths), 64):
        chunk = paths[start : start + 64]
        batch = torch.stack(
            [torch.as_tensor(chain({"image": str(path)})["image"]) for path, _ in chunk]
        )
        with torch.no_grad():
            probabilities = torch.sigmoid(model(batch.float())).numpy()
        for (_, study), row in zip(chunk, probabilities, strict=True):
            previous = study_scores.get(study)
            study_scores[study] = row if previous is None else np.maximum(previous, row)
    uids = [uid for uid in study_scores if uid in truth]
    patients = [f"{truth[u]['site']}/{truth[u]['patient']}" for u in uids]
    print(
        f"\nexternal test: {len(uids)} studies of {len(set(patients))} new patients "
        f"(campaign seed {seed}), scored as the service scores them"
    )
    print(f"{'':<14}{'AUROC':>8}{'95% CI':>14}{'ideal (same studies)':>22}{'ratio':>7}")
    results: dict[str, Any] = {}
    for j, finding in enumerate(labels):
        y = np.array([float(truth[u]["label"][finding]) for u in uids])
        p_model = np.array([float(study_scores[u][j]) for u in uids])
        ideal = auroc([truth[u]["ideal_score"][finding] for u in uids], y)
        interval = bootstrap_auroc(y, p_model, patients)
        ratio = interval.auroc / ideal if ideal else math.nan
        results[finding] = {
            "auroc": interval.auroc,
            "ci_low": interval.low,
            "ci_high": interval.high,
            "ideal_auroc": ideal,
            "ratio": ratio,
            "n": len(uids),
            "n_positive": int(y.sum()),
        }
        ci = f"{_fmt(interval.low)}-{_fmt(interval.high)}"
        print(f"{finding:<14}{_fmt(interval.auroc):>8}{ci:>14}{_fmt(ideal):>22}{_fmt(ratio):>7}")
    shutil.rmtree(folder, ignore_errors=True)
    return results


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per finding, the mean over the splits of the AUROC and of both ratios; printed."""
    summary: dict[str, Any] = {}
    names = list(runs[0]["findings"])
    if len(runs) > 1:
        print(f"\nover {len(runs)} splits (split seeds {[r['split_seed'] for r in runs]}):")
        print(
            f"{'':<14}{'AUROC per split':<28}{'mean':>7}{'ratio':>7}{'ratio (same studies)':>22}"
            f"{'ratio (external)':>18}"
        )
    for name in names:
        entries = [run["findings"][name] for run in runs]
        aurocs = [e["auroc"] for e in entries]
        ratios = [e["ratio"] for e in entries]
        paired = [e.get("ratio_test_studies", math.nan) for e in entries]
        external = [r["external"][name]["ratio"] for r in runs if r.get("external")]
        summary[name] = {
            "auroc": float(sum(aurocs) / len(aurocs)),
            "ratio": float(sum(ratios) / len(ratios)),
            "ratio_test_studies": float(sum(paired) / len(paired)),
            "ratio_external": float(sum(external) / len(external)) if external else math.nan,
            "ideal_auroc": entries[0]["ideal_auroc"],
        }
        if len(runs) > 1:
            each = " ".join(_fmt(a) for a in aurocs)
            print(
                f"{name:<14}{each:<28}{_fmt(summary[name]['auroc']):>7}"
                f"{_fmt(summary[name]['ratio']):>7}{_fmt(summary[name]['ratio_test_studies']):>22}"
                f"{_fmt(summary[name]['ratio_external']):>18}"
            )
    return summary


def leave_one_site_out(
    config: Any, settings: Any, sites: list[str], truth: dict[str, Any], device: str | None
) -> dict[str, Any]:
    """Per site: train on the other sites, test on every study of this one."""
    import numpy as np
    import torch

    from medai.snapshots import SnapshotQuery, create_snapshot
    from medai.training.data import build_training_data
    from medai.training.evaluation.bootstrap import bootstrap_auroc
    from medai.training.prediction import predict

    results: dict[str, Any] = {}
    for held_out in sites:
        others = tuple(s for s in sites if s != held_out)
        names = {}
        for role, chosen in (("train", others), ("held", (held_out,))):
            names[role] = f"loso-{held_out}-{role}"
            query = SnapshotQuery(sites=chosen, modalities=("CR", "DX"), body_part="CHEST")
            create_snapshot(names[role], query, settings=settings, actor="benchmark")
        print(f"\nleave {held_out} out: training on {', '.join(others)} ...", flush=True)
        variant = config.model_copy(
            update={"data": config.data.model_copy(update={"snapshot": names["train"]})}
        )
        tracked, seconds = train(variant, settings, device)
        # Every split of the held-out site is test data here: no augmentation, so the
        # (shuffled) training loader gives plain images too.
        held = config.model_copy(
            update={
                "data": config.data.model_copy(update={"snapshot": names["held"]}),
                "transforms": config.transforms.model_copy(update={"augment": None}),
            }
        )
        data = build_training_data(held, settings)
        model = tracked.result.model
        parts = [
            predict(model, data.loaders[split], torch.device("cpu"))
            for split in ("train", "val", "test")
        ]
        labels = np.concatenate([p[0] for p in parts])
        probs = np.concatenate([p[1] for p in parts])
        per_finding: dict[str, Any] = {}
        print(_HEADER)
        for j, finding in enumerate(config.data.labels):
            known = ~np.isnan(labels[:, j])
            y, p = labels[known, j], probs[known, j]
            ideal = truth["findings"][finding]["by_site"][held_out]["ideal_auroc"]
            if y.size and 0 < y.sum() < y.size:
                interval = bootstrap_auroc(y, p)
                entry = _entry(interval.auroc, interval.low, interval.high, ideal)
            else:
                entry = _entry(math.nan, math.nan, math.nan, ideal)
            entry.update(n=int(y.size), n_positive=int(y.sum()))
            per_finding[finding] = entry
            print(_row(f"{finding} @ {held_out}", entry))
        results[held_out] = {"findings": per_finding, "wall_s": seconds}
        print(f"trained in {seconds:.0f} s")
    return results


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


CT_MODEL_DIR = REPO / "models" / "ct-nodule"


def ct_nodule_benchmark(settings: Any, work: Path, args: argparse.Namespace) -> bool:
    """``--model ct-nodule``: the 3-D CT model on a synthetic CT campaign, against its ceiling.

    Generates ``--ct-studies`` chest CT series (two sites with a CT scanner, every study a
    CT of ``--ct-slices`` slices of ``--ct-size`` px, 3-D nodules of the ``--difficulty``),
    ingests them, imports the CT label sheets, freezes a series-level snapshot and trains
    ``models/ct-nodule``; prints the test AUROC of ``nodule`` (pooled and per site) beside
    the CT ideal observer's (the population ceiling, and on the same test studies) and the
    wall time. True when the training ran within :data:`TARGET_SECONDS`.
    """
    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign
    from medai.collection.labels import import_label_sheet
    from medai.collection.outcomes import Offer
    from medai.collection.pipeline import IngestPipeline
    from medai.dicom.synth import generate
    from medai.snapshots import SnapshotQuery, create_snapshot
    from medai.training.config import load_model_config

    config = load_model_config(CT_MODEL_DIR)
    if args.epochs is not None:
        config = config.model_copy(
            update={"schedule": config.schedule.model_copy(update={"epochs": args.epochs})}
        )
    started = time.perf_counter()
    synth = generate(
        work / "synth",
        studies=args.ct_studies,
        seed=args.seed,
        sites=("site-a", "site-b"),
        image_size=args.ct_size,
        ct_slices=args.ct_slices,
        ct_every=1,
        difficulty=args.difficulty,
    )
    generated = time.perf_counter()
    init_campaign(load_campaign(CAMPAIGN), settings)
    offers = [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    outcomes = IngestPipeline.from_settings(settings).ingest_many(offers)
    stored = sum(1 for outcome in outcomes if outcome.kind == "stored")
    ingested = time.perf_counter()
    for site, sheet in synth.ct_label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="benchmark")
    assert synth.ground_truth is not None
    truth = json.loads(synth.ground_truth.read_text(encoding="utf-8"))["ct"]
    ceiling = truth["findings"]["nodule"]
    positives = sum(r.nodule for r in synth.study_records) / len(synth.study_records)
    print(
        f"CT campaign: {synth.studies} series of {args.ct_slices} x {args.ct_size} px generated "
        f"in {generated - started:.0f} s, {stored} instances stored in "
        f"{ingested - generated:.0f} s; nodule prevalence {positives:.0%}; difficulty "
        f"{synth.difficulty}: CT ideal observer AUROC {ceiling['ideal_auroc']:.3f}"
    )
    name = f"ct-nodule-s{args.split_seed}"
    info = create_snapshot(
        name,
        SnapshotQuery(modalities=("CT",), level="series"),
        settings=settings,
        actor="benchmark",
        seed=args.split_seed,
    )
    counts = ", ".join(
        f"{s} {info.counts[s]['series']} ({info.counts[s]['positives']['nodule']} with a nodule)"
        for s in ("train", "val", "test")
    )
    print(f"snapshot {name} (series level): {counts}; series excluded {len(info.excluded)}")
    # The ideal observer on the same test studies (the CT truth has the chest one's shape).
    paired = ideal_on_test_studies(settings, name, truth)["nodule"]
    config = config.model_copy(update={"data": config.data.model_copy(update={"snapshot": name})})
    size = "x".join(str(v) for v in config.transforms.image_size)
    spacing = "x".join(f"{v:g}" for v in config.transforms.spacing_mm or ())
    print(
        f"\ntraining {config.name} ({config.network.title}, {size} voxels at {spacing} mm, "
        f"{config.schedule.epochs} epochs, batch {config.schedule.batch_size}) ...",
        flush=True,
    )
    tracked, seconds = train(config, settings, args.device)
    table = tracked.result.evaluation.table
    print(f"\ntest AUROC of nodule against the CT ideal observer\n{_HEADER}")
    for row in table.itertuples(index=False):
        where = "nodule" if row.site == "all" else f"  nodule @ {row.site}"
        ideal = (
            ceiling["ideal_auroc"]
            if row.site == "all"
            else ceiling["by_site"].get(str(row.site), {}).get("ideal_auroc")
        )
        entry = _entry(float(row.auroc), float(row.auroc_low), float(row.auroc_high), ideal)
        entry.update(n=int(row.n), n_positive=int(row.n_positive))
        print(_row(where, entry))
    pooled = table[table["site"] == "all"].iloc[0]
    print(
        f"the CT ideal observer on the same test studies: {_fmt(paired)}; model "
        f"{_fmt(float(pooled['auroc']))}, ratio {_fmt(float(pooled['auroc']) / paired)}"
    )
    result = tracked.result
    print(
        f"best epoch {result.best_epoch} of {len(result.history)} on {result.device}; "
        f"training wall time {seconds:.0f} s (target < {TARGET_SECONDS:.0f} s): "
        f"{'pass' if seconds < TARGET_SECONDS else 'FAIL'}; registered {tracked.model_name} "
        f"version {tracked.model_version}"
    )
    if args.json is not None:
        document = {
            "model": "ct-nodule",
            "auroc": float(pooled["auroc"]),
            "ci_low": float(pooled["auroc_low"]),
            "ci_high": float(pooled["auroc_high"]),
            "ideal_auroc": ceiling["ideal_auroc"],
            "ideal_auroc_test_studies": paired,
            "wall_s": seconds,
            "studies": args.ct_studies,
            "difficulty": synth.difficulty,
            "epochs": len(result.history),
            "device": result.device,
        }
        args.json.write_text(
            json.dumps(_json_ready(document), indent=1, sort_keys=True) + "\n", encoding="utf-8"
        )
    return seconds < TARGET_SECONDS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=600, help="synthetic chest studies")
    parser.add_argument("--seed", type=int, default=11, help="seed of the synthetic campaign")
    parser.add_argument(
        "--image-size", type=int, default=None, help="synthetic image size (default: the model's)"
    )
    parser.add_argument(
        "--splits",
        type=int,
        default=1,
        help="train on this many patient splits of the same campaign (snapshot seeds)",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="the first snapshot seed")
    parser.add_argument(
        "--external-studies",
        type=int,
        default=600,
        help="studies of the independent test campaign each model is also scored on (0: none)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override schedule.epochs")
    parser.add_argument("--lr", type=float, default=None, help="override optimizer.lr")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if any)")
    parser.add_argument(
        "--caches", default="none,memory,disk", help="caches for the loader throughput"
    )
    parser.add_argument(
        "--difficulty", default="hard", help="synthetic difficulty: hard, moderate or tiny"
    )
    parser.add_argument(
        "--leave-one-site-out",
        action="store_true",
        help="also train on two sites and test on the third, for each site",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results to this file")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader throughput")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--model",
        choices=("chest-xray-triage", "ct-nodule"),
        default="chest-xray-triage",
        help="ct-nodule: the 3-D CT model on a synthetic CT campaign (see ct_nodule_benchmark)",
    )
    parser.add_argument("--ct-studies", type=int, default=240, help="CT series (ct-nodule)")
    parser.add_argument("--ct-slices", type=int, default=24, help="slices per CT series")
    parser.add_argument("--ct-size", type=int, default=48, help="CT rows and columns")
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
    if args.model == "ct-nodule":
        try:
            passed = ct_nodule_benchmark(settings, work, args)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        sys.exit(0 if passed else 1)
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
            f"{config.name}: {config.network.title}, {config.transforms.image_size[0]} px, "
            f"{config.schedule.epochs} epochs (patience {config.schedule.patience}), batch "
            f"{config.schedule.batch_size}, lr {config.optimizer.lr}"
            f"{' [overrides: ' + ', '.join(overrides) + ']' if overrides else ' [demo config]'}"
        )
        print(
            f"{os.cpu_count()} CPU cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; CUDA: {torch.cuda.is_available()}; in {work}\n"
        )
        truth, sites = build_campaign(
            settings, work / "synth", args.studies, args.seed, size, args.difficulty
        )
        runs: list[dict[str, Any]] = []
        for split_seed in range(args.split_seed, args.split_seed + args.splits):
            name = freeze_snapshot(settings, split_seed)
            paired = ideal_on_test_studies(settings, name, truth)
            config = config.model_copy(
                update={"data": config.data.model_copy(update={"snapshot": name})}
            )
            print(f"\ntraining {config.name} on {name} ...", flush=True)
            tracked, seconds = train(config, settings, args.device)
            findings = compare_with_ceiling(tracked, truth, paired)
            result = tracked.result
            print(
                f"\nbest epoch {result.best_epoch} of {len(result.history)} run "
                f"({'stopped early' if result.stopped_early else 'all epochs'}) on {result.device}"
            )
            print(
                f"training wall time: {seconds:.0f} s (target < {TARGET_SECONDS:.0f} s): "
                f"{'pass' if seconds < TARGET_SECONDS else 'FAIL'}"
            )
            print(f"registered {tracked.model_name} version {tracked.model_version}")
            external = (
                external_test(
                    tracked,
                    config,
                    work / "external",
                    args.external_studies,
                    args.seed + 1000,
                    size,
                    args.difficulty,
                )
                if args.external_studies
                else {}
            )
            runs.append(
                {
                    "split_seed": split_seed,
                    "findings": findings,
                    "external": external,
                    "wall_s": seconds,
                    "epochs": len(result.history),
                    "device": result.device,
                }
            )
        summary = summarize(runs)
        in_time = all(run["wall_s"] < TARGET_SECONDS for run in runs)
        ok = in_time and all(
            entry["ratio"] >= TARGET_RATIO
            for entry in summary.values()
            if not math.isnan(entry["ratio"])
        )
        # The first split's figures at the top level (the documented shape), every split's
        # under "splits", and their means under "mean" when there are several.
        document: dict[str, Any] = {
            "findings": runs[0]["findings"],
            "wall_s": runs[0]["wall_s"],
            "difficulty": truth["difficulty"],
            "studies": args.studies,
            "image_size": size,
            "epochs": runs[0]["epochs"],
            "device": runs[0]["device"],
            "splits": runs,
            "mean": summary,
        }
        if args.leave_one_site_out:
            document["leave_one_site_out"] = leave_one_site_out(
                config, settings, sites, truth, args.device
            )
        if args.json is not None:
            args.json.write_text(
                json.dumps(_json_ready(document), indent=1, sort_keys=True) + "\n",
                encoding="utf-8",
            )
        if not args.no_loader:
            loader_throughput(config, settings, [c for c in args.caches.split(",") if c])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
