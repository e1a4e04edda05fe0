"""Inference throughput and latency: `medai serve` beside `mlflow models serve`, same load.

In one run:
  1. builds a tiny synthetic campaign in a temporary MEDAI_HOME and trains the demo model
     (models/chest-xray-triage/config.toml: its network and input size, one epoch), registers
     it in MLflow and promotes it to champion;
  2. serves models:/chest-xray-triage@champion with
       * medai  — `medai serve` (POST /v1/predict, body the DICOM instance,
                  Content-Type: application/dicom, a clinician key), and
       * MLflow — `mlflow models serve --env-manager local` (POST /invocations, body the
                  preprocessed tensor as JSON {"inputs": [...]}: a client of MLflow's server
                  must decode the DICOM and apply the model's transforms itself),
     one server at a time, each a single process with its default settings;
  3. drives each with the same load: 1, 8 and 32 concurrent clients (threads, one keep-alive
     connection each, http.client: a lean load generator, since it shares the cores with
     the server), a fixed number of requests per client count, after a warm-up;
  4. measures **the limit**: a bare in-process loop over the same model (loaded as the
     service loads it, so the same forward backend), input size and instances: parse,
     decode, preprocess and forward one instance after another, no HTTP, no audit;
  5. prints requests/s and p50/p99 latency side by side, where a medai request's time went
     (decode, preprocess, queue, forward, postprocess, audit: medai's own
     medai_inference_stage_seconds histograms), and the ratios against the targets: at 32
     clients >= 3x MLflow's throughput and a lower p99; at 1 client a p50 no worse; the
     service's best throughput >= 0.8x the bare loop's.

    python benchmarks/serve.py [--requests 256] [--clients 1,8,32] [--image-size 512]
                               [--only medai|mlflow] [--epochs 1] [--home HOME] [--keep]
                               [--json OUT]

``--home HOME`` serves the demo model a ``benchmarks/train.py --keep`` run trained (its
``home`` folder): the network the pilot would serve, with its int8 and bfloat16 checks.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.utils.dicom_net import free_port  # noqa: E402

if TYPE_CHECKING:
    from medai.config import Settings
    from medai.training.config import ModelConfig

MODEL = "chest-xray-triage"
CONFIG = REPO / "models" / MODEL / "config.toml"
WARMUP = 16
# medai's per-request stages, in the order a request meets them (medai_inference_stage_seconds).
STAGES = ("decode", "preprocess", "queue", "forward", "postprocess", "audit")


@dataclass
class Run:
    """One client count against one server."""

    server: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # medai's own metrics over the run (differences of its /metrics counters).
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000.0

    def stages_ms(self) -> dict[str, float]:
        """Mean milliseconds per request in each stage, from the run's /metrics differences."""
        stages = {}
        for stage in STAGES:
            count = self.metrics.get(f"stage_count:{stage}", 0.0)
            if count:
                stages[stage] = 1000.0 * self.metrics[f"stage_sum:{stage}"] / count
        return stages

    def as_json(self) -> dict[str, object]:
        return {
            "server": self.server,
            "clients": self.clients,
            "requests": len(self.latencies),
            "errors": len(self.errors),
            "seconds": self.seconds,
            "requests_per_s": self.rate,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "stages_ms": self.stages_ms(),
            "metrics": self.metrics,
        }


@dataclass
class BareLoop:
    """The limit: the same model and instances in a plain in-process loop."""

    backend: str
    reason: str
    requests: int
    seconds: float
    stages: dict[str, float]  # milliseconds per request

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class Target:
    """What one server is sent: where, with which headers, which bodies, what a good answer is."""

    server: str
    url: str
    headers: dict[str, str]
    bodies: list[bytes]
    # What is wrong with an answer (status, body), or None.
    check: Callable[[int, bytes], str | None]
    metrics: Callable[[], dict[str, float]] | None = None


def clean_environment() -> dict[str, str]:
    """This process's environment without the developer's own MEDAI_* settings.

    The interpreter's bin directory comes first on PATH: `mlflow models serve` runs
    `uvicorn` by name.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDAI_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# ---------------------------------------------------------------- the model and the studies


def register_demo_model(work: Path, epochs: int) -> tuple[Settings, ModelConfig]:
    """Train the demo model's architecture on a tiny campaign; champion. (settings, config)."""
    from medai.config import Settings
    from medai.training.config import ModelConfig
    from medai.training.tracking import promote, train_tracked
    from tests.utils.research import build_tiny_catalog, tiny_synth

    settings = Settings(home=work / "home", database_url=f"sqlite:///{work / 'home/catalog.db'}")
    print("building a tiny synthetic campaign and its snapshot ...", flush=True)
    build_tiny_catalog(settings, tiny_synth(work / "train-synth"), snapshot=MODEL)
    data = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    # The demo's network, labels and transforms (input size) as they are; only what makes
    # training take seconds changes: the snapshot, the schedule, the evaluation's effort.
    data["data"]["snapshot"] = MODEL
    data["schedule"] |= {"epochs": epochs, "batch_size": 4, "patience": 0}
    data["evaluation"] |= {"n_bootstrap": 50, "min_auroc_ci_low": 0.0}
    config = ModelConfig.model_validate(data)
    print(
        f"training {config.network.title} on {list(config.transforms.image_size)} px, "
        f"{epochs} epoch(s), and registering it ...",
        flush=True,
    )
    start = time.perf_counter()
    tracked = train_tracked(config, settings, device="cpu")
    promote(MODEL, tracked.model_version, settings, min_auroc_ci_low=0.0)
    print(
        f"registered {MODEL} version {tracked.model_version} as champion "
        f"({time.perf_counter() - start:.0f} s)\n",
        flush=True,
    )
    return settings, config


def trained_model(home: Path) -> tuple[Settings, ModelConfig]:
    """The demo model a training kept in ``home`` (``benchmarks/train.py --keep``): its
    champion, else its latest version promoted (through the gate, or overriding it with
    an audited reason when the gate refuses)."""
    from mlflow.tracking import MlflowClient

    from medai.config import Settings
    from medai.errors import MedaiError
    from medai.training.export import load_version
    from medai.training.registry import promote

    settings = Settings(home=home)
    uri = settings.resolved_mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(MODEL, "champion").version
    except Exception:  # no champion yet: MLflow raises its own for a missing alias
        versions = client.search_model_versions(f"name = '{MODEL}'")
        if not versions:
            raise SystemExit(f"{home} holds no registered {MODEL}") from None
        version = str(max(int(v.version) for v in versions))
        try:
            promote(MODEL, version, settings, actor="benchmarks/serve.py")
        except MedaiError as exc:
            # A ~90-study test split gives wide intervals: the gate may refuse a model whose
            # speed is all this benchmark measures. Overridden on the record, as a user must.
            print(f"the gate refuses version {version} ({exc}); overriding it on the record")
            promote(
                MODEL, version, settings, actor="benchmarks/serve.py", override_gate=True,
                reason="benchmarks/serve.py measures serving speed, not the model's evidence",
            )  # fmt: skip
    loaded = load_version(MODEL, version, settings)
    tags = client.get_run(loaded.run_id).data.tags
    checks = ", ".join(f"{k} {tags[k]}" for k in ("medai.int8", "medai.bfloat16") if k in tags)
    print(f"serving {MODEL} version {version} trained in {home} ({checks or 'no checks'})\n")
    config = loaded.config
    return settings, config


def load_studies(work: Path, count: int, image_size: int) -> list[bytes]:
    """``count`` synthetic chest radiographs (``image_size`` px), the bytes a PACS would send."""
    from medai.dicom.synth import generate

    synth = generate(
        work / "load-synth", studies=count, seed=2026, sites=("site-a",),
        image_size=image_size, ct_slices=0,
    )  # fmt: skip
    files = [r.files[0] for r in synth.study_records if r.modality in ("CR", "DX")]
    if not files:
        raise SystemExit("the generator made no radiographs")
    return [path.read_bytes() for path in files]


def mlflow_bodies(instances: Sequence[bytes], config: ModelConfig) -> tuple[list[bytes], str]:
    """Each instance as MLflow's server takes it: the model input, JSON {"inputs": [...]}."""
    from medai.training.reader import read_image
    from medai.training.transforms import build_transforms

    chain = build_transforms(config.transforms, train=False)
    bodies, shape = [], ""
    for blob in instances:
        tensor = chain({"image": read_image(blob)})["image"].unsqueeze(0)
        shape = "x".join(str(n) for n in tensor.shape)
        bodies.append(json.dumps({"inputs": tensor.tolist()}).encode())
    return bodies, shape


# ---------------------------------------------------------------- the two servers


class Server:
    """A server process in its own session (stopped with its children), logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, url: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} was not ready after {timeout:.0f} s (log: {self.log})")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._out.close()


def start_medai(
    settings: Settings, work: Path, port: int, extra: dict[str, str] | None = None
) -> tuple[Server, str]:
    """`medai serve` on ``port`` and a clinician key for it; ``extra``: more MEDAI_* settings."""
    env = (
        (extra or {})
        | clean_environment()
        | {
            "MEDAI_HOME": str(settings.resolved_home),
            "MEDAI_DATABASE_URL": settings.resolved_database_url,
            "MEDAI_MODELS_DIR": str(REPO / "models"),
            "MEDAI_SERVE_MODEL": MODEL,
            "MEDAI_LOG_LEVEL": "WARNING",
        }
    )
    medai = [sys.executable, "-m", "medai.cli"]
    # A name of its own per run: a kept home (--home) already holds the earlier runs' keys.
    name = f"bench-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    created = subprocess.run(
        [*medai, "keys", "create", "--role", "clinician", "--name", name],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if created.returncode != 0:
        raise SystemExit(f"medai keys create failed:\n{created.stderr[-2000:]}")
    key = created.stdout.strip().splitlines()[-1]  # the key is alone on the last line
    server = Server(
        "medai serve",
        [*medai, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env,
        work / "medai-serve.log",
    )
    return server, key


def start_mlflow(settings: Settings, work: Path, port: int) -> Server:
    """`mlflow models serve` of the champion, from the same tracking store, on ``port``."""
    uri = settings.resolved_mlflow_tracking_uri
    env = clean_environment() | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    command = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    return Server("mlflow models serve", command, env, work / "mlflow-serve.log")


def medai_metrics(url: str, key: str) -> Callable[[], dict[str, float]]:
    """A reader of medai's batching counters from its ``/metrics`` (sums and counts)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "medai_inference_batch_size_sum",
        "medai_inference_batch_size_count",
        "medai_inference_forward_seconds_sum",
        "medai_inference_queue_seconds_sum",
    }

    def read() -> dict[str, float]:
        response = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        response.raise_for_status()
        values = dict.fromkeys(wanted, 0.0)
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in wanted:
                    values[sample.name] += sample.value
                elif sample.name.startswith("medai_inference_stage_seconds_"):
                    kind = sample.name.removeprefix("medai_inference_stage_seconds_")
                    if kind in ("sum", "count"):
                        values[f"stage_{kind}:{sample.labels['stage']}"] = sample.value
        return values

    return read


def medai_check(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"{status} {body[:200]!r}"
    return None if "findings" in json.loads(body) else f"no findings: {body[:200]!r}"


def mlflow_check(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"{status} {body[:200]!r}"
    return None if "predictions" in json.loads(body) else f"no predictions: {body[:200]!r}"


# ---------------------------------------------------------------- the load


def drive(target: Target, clients: int, requests: int) -> Run:
    """``requests`` POSTs from ``clients`` threads at once; every latency, and the wall time."""
    run = Run(target.server, clients, 0.0)
    lock = threading.Lock()
    issued = [0]
    barrier = threading.Barrier(clients + 1)

    url = urlsplit(target.url)
    headers = {**target.headers, "Connection": "keep-alive"}

    def client() -> None:
        # http.client rather than httpx: the load generator shares the 2 cores with the
        # server measured, and its own cost per request is a third of httpx's.
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=300)
        barrier.wait()
        try:
            while True:
                with lock:
                    index = issued[0]
                    issued[0] += 1
                if index >= requests:
                    return
                body = target.bodies[index % len(target.bodies)]
                start = time.perf_counter()
                try:
                    connection.request("POST", url.path, body=body, headers=headers)
                    response = connection.getresponse()
                    problem = target.check(response.status, response.read())
                except (OSError, http.client.HTTPException) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    connection.close()  # the next request opens a new connection
                elapsed = time.perf_counter() - start
                with lock:
                    if problem is None:
                        run.latencies.append(elapsed)
                    else:
                        run.errors.append(problem)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - start
    return run


def measure(target: Target, client_counts: Sequence[int], requests: int) -> list[Run]:
    warm = drive(target, 1, WARMUP)  # first requests pay for lazy imports and allocations
    if warm.errors:
        raise SystemExit(f"{target.server}: warm-up failed: {warm.errors[0]}")
    runs = []
    for clients in client_counts:
        print(f"  {target.server}: {clients} client(s), {requests} requests ...", flush=True)
        before = target.metrics() if target.metrics else {}
        run = drive(target, clients, requests)
        if target.metrics:
            after = target.metrics()
            run.metrics = {name: after[name] - before.get(name, 0.0) for name in after}
        if run.errors:
            print(f"    {len(run.errors)} failed, e.g. {run.errors[0]}")
        if not run.latencies:
            raise SystemExit(f"{target.server}: every request failed")
        runs.append(run)
    return runs


# ---------------------------------------------------------------- the limit


def bare_loop(settings: Settings, instances: Sequence[bytes], requests: int) -> BareLoop:
    """Parse, decode, preprocess and forward ``requests`` instances one by one, in process.

    The model is loaded by the service's own loader with the service's default settings
    (so the forward pass runs on the backend the service chooses) and torch gets the
    service's threads.
    """
    import torch

    from medai.dicom.read import parse_instance
    from medai.serving.inference.model import choose_device, load_served_model
    from medai.serving.inference.service import cpu_threads

    torch.set_num_threads(cpu_threads(0))
    model = load_served_model(settings, name=MODEL, alias="champion", device=choose_device(None))
    backend = model.backend
    totals = dict.fromkeys(("decode", "preprocess", "forward"), 0.0)

    def one(blob: bytes) -> None:
        started = time.perf_counter()
        parsed = parse_instance(blob, max_bytes=settings.max_instance_bytes, keep_first_frame=True)
        image = model.decode(parsed)
        decoded = time.perf_counter()
        tensor = model.transform(image)
        transformed = time.perf_counter()
        model.predict(tensor.unsqueeze(0))
        totals["decode"] += decoded - started
        totals["preprocess"] += transformed - decoded
        totals["forward"] += time.perf_counter() - transformed

    for index in range(WARMUP):
        one(instances[index % len(instances)])
    totals = dict.fromkeys(totals, 0.0)
    start = time.perf_counter()
    for index in range(requests):
        one(instances[index % len(instances)])
    seconds = time.perf_counter() - start
    return BareLoop(
        backend="torch" if backend is None else backend.name,
        reason="" if backend is None else backend.reason,
        requests=requests,
        seconds=seconds,
        stages={name: 1000.0 * total / requests for name, total in totals.items()},
    )


# ---------------------------------------------------------------- the report


def report_limit(medai: list[Run], limit: BareLoop) -> None:
    print(
        f"\nthe limit (bare in-process loop: parse + decode + preprocess + forward, one "
        f"instance at a time, forward by {limit.backend}): {limit.rate:.1f} req/s; per "
        "request " + ", ".join(f"{k} {v:.1f} ms" for k, v in limit.stages.items())
    )
    if limit.reason:
        print(f"  forward backend: {limit.backend} ({limit.reason})")
    if medai:
        best = max(medai, key=lambda run: run.rate)
        ratio = best.rate / limit.rate
        print(
            f"medai's best throughput / the limit = {ratio:.2f} ({best.rate:.1f} req/s at "
            f"{best.clients} clients; target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})"
        )


def report(medai: list[Run], mlflow: list[Run]) -> None:
    by_clients = {run.clients: run for run in mlflow}
    print()
    header = (
        f"{'clients':>7} | {'medai req/s':>11} {'p50 ms':>8} {'p99 ms':>8} | "
        f"{'mlflow req/s':>12} {'p50 ms':>8} {'p99 ms':>8} | {'req/s x':>7}"
    )
    print(header)
    print("-" * len(header))
    for ours in medai:
        theirs = by_clients.get(ours.clients)
        row = f"{ours.clients:>7} | {ours.rate:>11.1f} {ours.percentile(50):>8.1f} "
        row += f"{ours.percentile(99):>8.1f} | "
        if theirs is None:
            row += f"{'-':>12} {'-':>8} {'-':>8} | {'-':>7}"
        else:
            row += f"{theirs.rate:>12.1f} {theirs.percentile(50):>8.1f} "
            row += f"{theirs.percentile(99):>8.1f} | {ours.rate / theirs.rate:>6.2f}x"
        print(row)
    print()
    top, one = max(by_clients), min(by_clients)
    ours_top = next((r for r in medai if r.clients == top), None)
    ours_one = next((r for r in medai if r.clients == one), None)
    if ours_top is not None:
        theirs = by_clients[top]
        ratio = ours_top.rate / theirs.rate
        print(
            f"at {top} clients: throughput medai / mlflow = {ratio:.2f}x (target >= 3x: "
            f"{'met' if ratio >= 3 else 'NOT met'}); p99 {ours_top.percentile(99):.1f} ms vs "
            f"{theirs.percentile(99):.1f} ms (target lower: "
            f"{'met' if ours_top.percentile(99) < theirs.percentile(99) else 'NOT met'})"
        )
    if ours_one is not None:
        theirs = by_clients[one]
        ratio = ours_one.percentile(50) / theirs.percentile(50)
        print(
            f"at {one} client: p50 medai / mlflow = {ratio:.2f} ({ours_one.percentile(50):.1f} "
            f"ms vs {theirs.percentile(50):.1f} ms; target <= 1: "
            f"{'met' if ratio <= 1 else 'NOT met'})"
        )


def print_runs(runs: list[Run]) -> None:
    # On a shared machine other work competes for the cores: say how much there was.
    load = os.getloadavg()[0]
    print(f"  (1-minute load average after the runs: {load:.1f} on {os.cpu_count()} cores)")
    for run in runs:
        print(
            f"  {run.server:<22}{run.clients:>3} clients {run.rate:>8.1f} req/s  "
            f"p50 {run.percentile(50):>7.1f} ms  p99 {run.percentile(99):>7.1f} ms"
        )
        batches = run.metrics.get("medai_inference_batch_size_count", 0.0)
        if batches:
            images = run.metrics["medai_inference_batch_size_sum"]
            forward = run.metrics["medai_inference_forward_seconds_sum"] * 1000.0
            queued = run.metrics["medai_inference_queue_seconds_sum"] * 1000.0
            print(
                f"{'':<30}{batches:.0f} forward passes of {images / batches:.1f} images, "
                f"{forward / batches:.1f} ms each ({forward / images:.1f} ms per image); "
                f"a batch's longest queue wait {queued / batches:.1f} ms on average"
            )
        stages = run.stages_ms()
        if stages:
            print(
                f"{'':<30}per request: "
                + ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in stages.items())
            )


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("MEDAI_"):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, NAME a MEDAI_ setting: {text!r}")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=256, help="requests per client count")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--image-size", type=int, default=512, help="radiograph size sent, px")
    parser.add_argument("--studies", type=int, default=8, help="distinct radiographs sent")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the model")
    parser.add_argument(
        "--medai-env",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for `medai serve` (repeatable), e.g. MEDAI_INFERENCE_BACKEND=onnx; "
        "none by default: the service runs with its defaults",
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="serve the demo model trained in this MEDAI_HOME (benchmarks/train.py --keep "
        "prints it) instead of training a tiny one",
    )
    parser.add_argument("--only", choices=("medai", "mlflow"), help="serve and drive one side")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args()
    client_counts = sorted({int(n) for n in args.clients.split(",")})

    work = Path(tempfile.mkdtemp(prefix="medai-bench-serve-"))
    try:
        if args.home is not None:
            settings, config = trained_model(args.home)
        else:
            settings, config = register_demo_model(work, args.epochs)
        instances = load_studies(work, args.studies, args.image_size)
        bodies, shape = mlflow_bodies(instances, config)
        print(
            f"load: {len(instances)} radiographs of {args.image_size} px; {os.cpu_count()} CPU "
            f"cores; {args.requests} requests per client count, after {WARMUP} warm-up ones\n"
            f"  medai  POST /v1/predict   the DICOM instance (application/dicom), "
            f"{np.mean([len(b) for b in instances]) / 1024:.0f} KiB\n"
            f'  mlflow POST /invocations  the preprocessed tensor as JSON {{"inputs": [...]}} '
            f"({shape} float32), {np.mean([len(b) for b in bodies]) / 1024:.0f} KiB: what a "
            "client of `mlflow models serve` must send, having decoded the DICOM and applied "
            "the model's transforms itself\n",
            flush=True,
        )
        medai_runs: list[Run] = []
        mlflow_runs: list[Run] = []
        if args.only in (None, "mlflow"):
            port = free_port()
            server = start_mlflow(settings, work, port)
            try:
                server.wait_ready(f"http://127.0.0.1:{port}/ping")
                target = Target(
                    "mlflow models serve",
                    f"http://127.0.0.1:{port}/invocations",
                    {"Content-Type": "application/json"},
                    bodies,
                    mlflow_check,
                )
                mlflow_runs = measure(target, client_counts, args.requests)
            finally:
                server.stop()
            print_runs(mlflow_runs)
        if args.only in (None, "medai"):
            port = free_port()
            server, key = start_medai(settings, work, port, dict(args.medai_env))
            try:
                server.wait_ready(f"http://127.0.0.1:{port}/readyz")
                target = Target(
                    "medai serve",
                    f"http://127.0.0.1:{port}/v1/predict",
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/dicom"},
                    instances,
                    medai_check,
                    medai_metrics(f"http://127.0.0.1:{port}/metrics", key),
                )
                medai_runs = measure(target, client_counts, args.requests)
            finally:
                server.stop()
            print_runs(medai_runs)
        # Last, alone on the machine: no server is running now.
        print(f"  the bare loop: {args.requests} requests ...", flush=True)
        limit = bare_loop(settings, instances, args.requests)
        report_limit(medai_runs, limit)
        if medai_runs and mlflow_runs:
            report(medai_runs, mlflow_runs)
        if args.json is not None:
            results = {
                "image_size": args.image_size,
                "model_input": list(config.transforms.image_size),
                "cpu_cores": os.cpu_count(),
                "load_average_1m": os.getloadavg()[0],
                "runs": [run.as_json() for run in [*mlflow_runs, *medai_runs]],
                "limit": {
                    "backend": limit.backend,
                    "reason": limit.reason,
                    "requests": limit.requests,
                    "requests_per_s": limit.rate,
                    "stages_ms": limit.stages,
                },
            }
            args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            print(f"\nwrote {args.json}")
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
