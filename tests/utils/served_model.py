"""A tiny champion model in its own MLflow store, for the inference service's tests.

:func:`train_champion` builds the tiny research campaign (:mod:`tests.utils.research`),
trains the 32-px ResNet-18 (seconds on a CPU), registers it and promotes it to
``champion``. The serving tests point their own (per-test) settings at its MLflow store,
so one training serves a whole test module; :func:`shared_champion` trains it once per
test process for the modules that only read it.

Also: :class:`ThreadedServer` (the app under uvicorn on loopback, in a thread),
:func:`wait_ready` (until ``/readyz`` says the model is loaded), :func:`load_with_backend`
and :func:`preprocessed` (a served model asked for a forward backend, and its inputs).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import torch
import uvicorn

from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.training.config import ModelConfig, load_model_config
from medai.training.networks import build_network
from medai.training.reader import dataset_to_image
from medai.training.tracking import promote, train_tracked
from medai.training.transforms import build_transforms
from tests.utils.dicom_net import free_port
from tests.utils.research import build_tiny_catalog, tiny_model_config, tiny_synth

MODEL = "tiny-triage"


@dataclass
class Champion:
    """A trained and promoted tiny model: where it is, its versions, and test studies."""

    settings: Settings
    name: str
    config: ModelConfig
    versions: list[str]
    synth: SynthResult
    radiographs: list[list[Path]] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return self.settings.resolved_mlflow_tracking_uri

    def serving_settings(self, settings: Settings, **update: object) -> Settings:
        """``settings`` (a test's own catalog and home) serving this model."""
        return settings.model_copy(
            update={"mlflow_tracking_uri": self.tracking_uri, "serve_model": self.name} | update
        )

    def train_version(self, seed: int) -> str:
        """Train and register one more version (another seed) as ``candidate``; its number."""
        text = tiny_model_config(self.name, "tiny", epochs=1).replace("seed = 7", f"seed = {seed}")
        model_dir = self.settings.resolved_home / "models" / f"{self.name}-{seed}"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.toml").write_text(text, encoding="utf-8")
        tracked = train_tracked(load_model_config(model_dir), self.settings, device="cpu")
        self.versions.append(tracked.model_version)
        return tracked.model_version

    def promote(self, version: str) -> None:
        """Move ``champion`` to ``version`` (on a tiny test set no version beats another
        significantly, so the gate's comparison with the champion is overridden)."""
        promote(
            self.name, version, self.settings, override_gate=True, reason="test: switch versions"
        )


@contextmanager
def clean_environment() -> Iterator[pytest.MonkeyPatch]:
    """A developer's own MEDAI_* removed, as the `settings` fixture does, for module-scoped
    fixtures; yields the MonkeyPatch, undone on exit."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
                patch.delenv(name)
        yield patch


def train_champion(root: Path, name: str = MODEL) -> Champion:
    """Build the tiny campaign under ``root``, train one version and make it champion."""
    with clean_environment():
        return _train_champion(root, name)


_SHARED: dict[int, Champion] = {}


def shared_champion(factory: pytest.TempPathFactory) -> Champion:
    """One champion per test process, for test modules that do not move its alias."""
    champion = _SHARED.get(os.getpid())
    if champion is None:
        champion = _SHARED[os.getpid()] = train_champion(factory.mktemp("shared-champion"))
    return champion


def _train_champion(root: Path, name: str) -> Champion:
    settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'catalog.db'}")
    synth = tiny_synth(root / "synth")
    build_tiny_catalog(settings, synth, "tiny")
    champion = Champion(
        settings=settings,
        name=name,
        config=load_model_config_text(root, name),
        versions=[],
        synth=synth,
        radiographs=[
            list(record.files) for record in synth.study_records if record.modality in ("CR", "DX")
        ],
    )
    version = champion.train_version(seed=7)
    champion.promote(version)
    return champion


def load_model_config_text(root: Path, name: str) -> ModelConfig:
    directory = root / "config" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(tiny_model_config(name, "tiny"), encoding="utf-8")
    return load_model_config(directory)


def reference_probabilities(
    champion: Champion, version: str, files: Sequence[Path | bytes]
) -> torch.Tensor:
    """The model of ``version`` run directly (not through the service) on ``files``.

    Rebuilt from MLflow's record of the run the way training evaluated it: the reader,
    the evaluation transforms, the network and its best weights; sigmoid of the logits.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run_id = client.get_model_version(champion.name, version).run_id
    weights = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="weights/best.pt", tracking_uri=champion.tracking_uri
    )
    config = champion.config
    network = build_network(
        config.network.name, num_labels=len(config.data.labels), in_channels=1, spatial_dims=2
    )
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    chain = build_transforms(config.transforms, train=False)
    blobs = [item if isinstance(item, bytes) else item.read_bytes() for item in files]
    images = [
        chain({"image": dataset_to_image(pydicom.dcmread(io.BytesIO(blob)))})["image"]
        for blob in blobs
    ]
    with torch.no_grad():
        return torch.sigmoid(network(torch.stack(images)))


def load_with_backend(champion: Champion, settings: Settings, backend: str) -> Any:
    """The champion loaded as the service loads it, asking for ``backend``, on the CPU."""
    from medai.serving.inference.model import load_served_model

    serving = champion.serving_settings(settings, inference_backend=backend)
    return load_served_model(
        serving, name=champion.name, alias="champion", device=torch.device("cpu")
    )


def preprocessed(model: Any, files: list[Path]) -> torch.Tensor:
    """``files`` preprocessed by ``model`` (a ServedModel) as it serves them, as one batch."""
    return torch.stack(
        [model.preprocess(pydicom.dcmread(io.BytesIO(path.read_bytes()))) for path in files]
    )


def wait_ready(client: Any, timeout: float = 120.0) -> None:
    """Poll ``/readyz`` (TestClient or httpx client) until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, f"not ready: {response.json()}"
        time.sleep(0.1)


class ThreadedServer:
    """The app under uvicorn on a free loopback port, in a thread of the test process.

    A real HTTP server (concurrent connections, the app's lifespan once), with the
    test's own settings object rather than environment variables.
    """

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


def study_of_two(first: Path, second: Path) -> tuple[bytes, bytes]:
    """Two instances of one study: ``first``, and ``second``'s image moved into its study."""
    from tests.utils.campaign import dataset_bytes

    lead = pydicom.dcmread(first)
    moved = pydicom.dcmread(second)
    moved.StudyInstanceUID = lead.StudyInstanceUID
    moved.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(second)])
    moved.file_meta.MediaStorageSOPInstanceUID = moved.SOPInstanceUID
    return first.read_bytes(), dataset_bytes(moved)
