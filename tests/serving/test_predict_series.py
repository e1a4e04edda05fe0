"""POST /v1/predict with a whole CT series, served by a series-level (3-D) champion.

One tiny 3-D model (8-slice series of 32 px, a shallow MONAI ResNet, 2 epochs) is trained
and promoted for the module; the volume run directly through the training reader, the
evaluation transforms and the network is the reference every answer is compared with.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pydicom
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.serving.app import create_app
from medai.training.config import ModelConfig, load_model_config
from medai.training.networks import network_from_config
from medai.training.tracking import promote, train_tracked
from medai.training.transforms import build_transforms
from medai.training.volume_reader import series_to_volume
from tests.serving.helpers import TestClient, bearer, multipart, new_key
from tests.utils.ct_research import CT_SLICES, build_ct_catalog, tiny_ct_config, tiny_ct_synth
from tests.utils.served_model import wait_ready

MODEL = "tiny-ct"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class CtChampion:
    settings: Settings
    config: ModelConfig
    version: str
    synth: SynthResult


@pytest.fixture(scope="module")
def ct_champion(tmp_path_factory: pytest.TempPathFactory) -> CtChampion:
    root = tmp_path_factory.mktemp("ct-champion")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):  # a developer's own MEDAI_* must not leak in
            if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
                patch.delenv(name)
        settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'catalog.db'}")
        synth = tiny_ct_synth(root / "synth")
        build_ct_catalog(settings, synth)
        model_dir = root / "config" / MODEL
        model_dir.mkdir(parents=True)
        (model_dir / "config.toml").write_text(tiny_ct_config(MODEL), encoding="utf-8")
        config = load_model_config(model_dir)
        tracked = train_tracked(config, settings, device="cpu")
        promote(MODEL, tracked.model_version, settings, override_gate=True, reason="test: tiny")
    return CtChampion(settings, config, tracked.model_version, synth)


@dataclass
class Served:
    client: TestClient
    key: str

    def predict(self, parts: list[bytes], **headers: str) -> httpx.Response:
        body, content_type = multipart(parts)
        sent = bearer(self.key) | {"Content-Type": content_type} | headers
        response: httpx.Response = self.client.post("/v1/predict", content=body, headers=sent)
        return response


@pytest.fixture
def served(campaign: Settings, ct_champion: CtChampion, tmp_path: Path) -> Iterator[Served]:
    models_dir = tmp_path / "models"
    (models_dir / MODEL).mkdir(parents=True)
    (models_dir / MODEL / "MODEL_CARD.md").write_text("# Model card: tiny-ct\n", "utf-8")
    settings = campaign.model_copy(
        update={
            "mlflow_tracking_uri": ct_champion.settings.resolved_mlflow_tracking_uri,
            "serve_model": MODEL,
            "models_dir": models_dir,
            "model_poll_seconds": 0.0,
        }
    )
    key = new_key(settings, "clinician", "clinician-1")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield Served(client, key)


def _series(champion: CtChampion, positive: bool) -> list[bytes]:
    record = next(
        r
        for r in champion.synth.study_records
        if r.ct_latent is not None and bool(r.ct_latent.nodule) == positive
    )
    return [path.read_bytes() for path in record.files]


def _reference(champion: CtChampion, parts: list[bytes]) -> float:
    """The champion run directly: training's volume reader, evaluation chain and network."""
    tracking = champion.settings.resolved_mlflow_tracking_uri
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    run_id = client.get_model_version(MODEL, champion.version).run_id
    weights = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="weights/best.pt", tracking_uri=tracking
    )
    config = champion.config
    network = network_from_config(config, 1, initial_weights=False)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    volume = series_to_volume(parts, config.transforms.spacing_mm)
    image = build_transforms(config.transforms, train=False)({"image": volume.array})["image"]
    with torch.no_grad():
        return float(torch.sigmoid(network(image[None]))[0, 0])


@pytest.mark.slow
@SQLITE
def test_a_series_is_predicted_as_one_volume_with_an_sr_of_the_series(
    served: Served, ct_champion: CtChampion
) -> None:
    parts = _series(ct_champion, positive=True)
    shuffled = parts[:]
    random.Random(1).shuffle(shuffled)  # the order sent does not matter
    response = served.predict(shuffled)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": MODEL, "version": ct_champion.version, "alias": "champion"}
    assert body["study"] == {"instances": CT_SLICES, "slices": CT_SLICES}
    (finding,) = body["findings"]
    assert finding["label"] == "nodule"
    assert finding["probability"] == pytest.approx(_reference(ct_champion, parts), abs=1e-5)
    assert finding["positive"] == (finding["probability"] >= finding["threshold"])

    sr_response = served.client.get(
        f"/v1/predictions/{body['prediction_id']}",
        headers=bearer(served.key) | {"Accept": "application/dicom"},
    )
    assert sr_response.status_code == 200
    sr = pydicom.dcmread(io.BytesIO(sr_response.content))
    first = pydicom.dcmread(io.BytesIO(parts[0]))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == first.StudyInstanceUID
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    sent = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for p in parts}
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence} == sent

    png = served.client.get(body["heatmap_url"], headers=bearer(served.key))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.width >= 8 and image.height >= 8


@pytest.mark.slow
@SQLITE
def test_a_series_with_a_missing_slice_is_refused_with_its_reason(
    served: Served, ct_champion: CtChampion
) -> None:
    parts = _series(ct_champion, positive=False)
    response = served.predict(parts[:3] + parts[4:])
    assert response.status_code == 422
    assert "missing-slice" in response.json()["detail"]
    one = served.predict(parts[:1])  # one slice is no volume
    assert one.status_code == 422 and "too-few-slices" in one.json()["detail"]


def test_the_heatmap_of_a_volume_is_its_axial_maximum_intensity_projection() -> None:
    from monai.networks.nets.resnet import ResNet

    from medai.serving.inference.heatmap import gradcam_overlay_png

    torch.manual_seed(0)
    network = ResNet(
        block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], spatial_dims=3,
        n_input_channels=1, num_classes=1, conv1_t_stride=2,
    ).eval()  # fmt: skip
    volume = torch.zeros(1, 8, 24, 24)
    volume[0, 5, 4:8, 16:20] = 1.0  # a bright lesion on one slice only
    plain = gradcam_overlay_png(network, volume, [], ["nodule"], panel_size=24)
    with Image.open(io.BytesIO(plain)) as image:
        grey = np.asarray(image.convert("L"))
        assert grey.shape[1] == 24
        assert grey[6, 18] > 200 and grey[18, 6] < 50
    mapped = gradcam_overlay_png(network, volume, [0], ["nodule"], panel_size=24)
    with Image.open(io.BytesIO(mapped)) as image:
        assert image.size[0] == 24
