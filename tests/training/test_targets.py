"""MONAI bundle-style ``_target_`` entries: checked at load, logged, trained and served.

The unit tests load configuration files and check what a user sees for each mistake (the
field, and what is wrong), before any training. The end-to-end test trains a network medai
does not list (MONAI's ``Classifier``, named only by ``_target_``) with an SGD optimiser,
a focal loss and an extra transform, all from the file; registers it, promotes it, and
asks the service for a prediction, which must equal the network rebuilt from the run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pydicom
import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle.config_parser import ConfigParser
from monai.networks.nets import Classifier
from monai.transforms.intensity.dictionary import RandGaussianNoised, ScaleIntensityRanged
from typer.testing import CliRunner

from medai.cli import app
from medai.config import Settings, get_settings
from medai.errors import ModelConfigError
from medai.serving.app import create_app
from medai.training.config import ModelConfig, apply_overrides, flatten, load_model_config
from medai.training.loop import build_loss, build_optimizer
from medai.training.networks import network_from_config
from medai.training.reader import dataset_to_image
from medai.training.targets import network_target_filled
from medai.training.transforms import build_transforms
from tests.serving.helpers import TestClient, bearer, new_key
from tests.utils.research import LABELS, build_tiny_catalog, tiny_synth
from tests.utils.served_model import wait_ready

MINIMAL = """
name = "tiny"
[data]
snapshot = "snap"
labels = ["nodule", "effusion"]
[transforms]
image_size = [32, 32]
"""
CLASSIFIER = """
[network]
_target_ = "monai.networks.nets.Classifier"
in_shape = ["@in_channels", 32, 32]
classes = "@num_labels"
channels = [4, 8]
strides = [2, 2]
"""


def _load(tmp_path: Path, text: str) -> ModelConfig:
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    return load_model_config(tmp_path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ModelConfigError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


def test_a_target_network_is_built_by_monai_with_medais_values(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL + CLASSIFIER)
    assert config.network.title == "monai.networks.nets.Classifier"
    model = network_from_config(config, 2)
    assert isinstance(model, Classifier)
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 2)  # "@num_labels" was filled


def test_the_entry_with_references_filled_builds_the_same_network(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL + CLASSIFIER)
    assert config.network.target is not None
    filled = network_target_filled(config.network.target, num_labels=2, image_size=[32, 32])
    assert filled["in_shape"] == [1, 32, 32] and filled["classes"] == 2
    standalone = ConfigParser({"net": filled}).get_parsed_content("net")
    assert isinstance(standalone, Classifier)
    assert standalone(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_the_logged_form_reloads_to_the_same_configuration(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + CLASSIFIER
        + """
[optimizer]
_target_ = "torch.optim.SGD"
lr = 0.05
momentum = 0.9
[loss]
_target_ = "monai.losses.FocalLoss"
gamma = 2.0
[[transforms.extra]]
_target_ = "monai.transforms.RandGaussianNoised"
prob = 0.5
std = 0.05
"""
    )
    config = _load(tmp_path, text)
    dumped = json.loads(json.dumps(config.model_dump(mode="json")))
    # The file's shape: _target_ beside its arguments, no medai-internal names.
    assert dumped["network"]["_target_"] == "monai.networks.nets.Classifier"
    assert dumped["network"]["classes"] == "@num_labels"
    assert dumped["optimizer"] == {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9}
    assert ModelConfig.model_validate(dumped).model_dump() == config.model_dump()
    params = flatten(config)
    assert params["optimizer._target_"] == "torch.optim.SGD"
    assert params["transforms.extra.0._target_"] == "monai.transforms.RandGaussianNoised"
    optimizer = build_optimizer(config, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            CLASSIFIER.replace("Classifier", "Classifierr"),
            "network._target_: unknown target 'monai.networks.nets.Classifierr'",
        ),
        (
            CLASSIFIER + "chanels = [4]\n",
            "network._target_: monai.networks.nets.Classifier could not be built: TypeError",
        ),
        (CLASSIFIER.replace('"@num_labels"', '"$1 + 1"'), "network.classes: '$' expressions"),
        (CLASSIFIER.replace('"@num_labels"', '"@labels"'), "network.classes: unknown reference"),
        (
            CLASSIFIER.replace('"@num_labels"', "5"),
            "network._target_: monai.networks.nets.Classifier must give logits of shape "
            "(N, num_labels) = (1, 2) for one image, but gave (1, 5)",
        ),
        (
            CLASSIFIER.replace("monai.networks.nets.Classifier", "subprocess.run"),
            "network._target_: 'subprocess.run' is not allowed here",
        ),
        (
            '[[transforms.extra]]\n_target_ = "monai.transforms.SaveImaged"\nkeys = "@keys"\n'
            'output_dir = "/tmp/x"\n',
            "transforms.extra[0]._target_: 'monai.transforms.SaveImaged' reads or writes files",
        ),
        (
            '[[transforms.extra]]\n_target_ = "monai.transforms.LoadImaged"\nkeys = "@keys"\n',
            "transforms.extra[0]._target_: 'monai.transforms.LoadImaged' reads or writes files",
        ),
        (
            '[[transforms.extra]]\n_target_ = "monai.transforms.Lambdad"\nkeys = "@keys"\n',
            "transforms.extra[0]._target_: 'monai.transforms.Lambdad' reads or writes files "
            "or calls a function",
        ),
        (
            CLASSIFIER + 'name = "resnet18"\n',
            "network.name: give either name or _target_, not both",
        ),
        (
            '[network]\n_target_ = "monai.networks.nets.DenseNet121"\nspatial_dims = 2\n'
            "in_channels = 1\nout_channels = 2\npretrained = true\n",
            "network.pretrained: weights are never downloaded",
        ),
        (CLASSIFIER + "_requires_ = []\n", "network._requires_: _requires_ is not supported"),
        (
            '[optimizer]\n_target_ = "torch.optim.SGD"\nlr = 0.1\nmomentun = 0.9\n',
            "optimizer._target_: torch.optim.SGD could not be built: TypeError: "
            "SGD.__init__() got an unexpected keyword argument 'momentun'",
        ),
        (
            '[optimizer]\n_target_ = "torch.optim.SGD"\nparams = []\n',
            "optimizer.params: medai passes the network's parameters",
        ),
        (
            '[loss]\n_target_ = "monai.losses.FocalLoss"\nreduction = "mean"\n',
            "loss.reduction: medai sets reduction='none'",
        ),
        (
            '[loss]\n_target_ = "monai.losses.DiceLoss"\n',
            "loss._target_: monai.losses.DiceLoss must give one loss per label and image",
        ),
        (
            '[[transforms.extra]]\n_target_ = "monai.transforms.RandGaussianNoise"\n',
            "transforms.extra[0]._target_: monai.transforms.RandGaussianNoise is not a "
            "dictionary transform",
        ),
        (
            '[[transforms.extra]]\n_target_ = "monai.transforms.RandGaussianNoised"\n'
            "_train_only_ = 1\n",
            "transforms.extra[0]._train_only_: _train_only_ is true or false",
        ),
    ],
)
def test_a_bad_entry_fails_at_load_naming_the_field(
    tmp_path: Path, extra: str, expected: str
) -> None:
    message = _error(tmp_path, MINIMAL + extra)
    assert f"config.toml: {expected}" in message, message


def test_an_override_switching_network_drops_the_old_arguments(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL + CLASSIFIER)
    named = apply_overrides(config, {"network": {"name": "resnet18"}})
    assert named.network.target is None and named.network.name == "resnet18"
    back = apply_overrides(
        named,
        {
            "network": {
                "_target_": "monai.networks.nets.DenseNet121",
                "spatial_dims": "@spatial_dims",
                "in_channels": "@in_channels",
                "out_channels": "@num_labels",
                "init_features": 4,
                "growth_rate": 4,
                "block_config": [1, 1, 1, 1],
            }
        },
    )
    assert back.network.title == "monai.networks.nets.DenseNet121"


def test_extra_transforms_run_in_training_and_where_marked(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[[transforms.extra]]
_target_ = "monai.transforms.RandGaussianNoised"
prob = 1.0
std = 0.1
[[transforms.extra]]
_target_ = "monai.transforms.ScaleIntensityRanged"
a_min = 0.0
a_max = 1.0
b_min = 0.0
b_max = 2.0
_train_only_ = false
"""
    )
    config = _load(tmp_path, text)
    train = [type(t) for t in build_transforms(config.transforms, train=True).transforms]
    evaluation = [type(t) for t in build_transforms(config.transforms, train=False).transforms]
    assert train.index(RandGaussianNoised) < train.index(ScaleIntensityRanged)
    assert RandGaussianNoised not in evaluation and ScaleIntensityRanged in evaluation
    image = torch.rand(1, 32, 32)
    out = build_transforms(config.transforms, train=False)({"image": image})["image"]
    assert float(out.max()) > 1.5  # the evaluation chain applied the [0, 2] rescale


def test_a_target_loss_is_masked_like_the_default(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL + '[loss]\n_target_ = "torch.nn.BCEWithLogitsLoss"\n')
    default = build_loss(_load(tmp_path, MINIMAL))
    target = build_loss(config)
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    truth = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    assert torch.allclose(target(logits, truth), default(logits, truth))
    # An unknown label contributes nothing, whatever its logit.
    moved = logits.clone()
    moved[0, 1] = 40.0
    assert torch.allclose(target(moved, truth), target(logits, truth))


TARGET_MODEL = "tiny-target"
TARGET_CONFIG = f"""
name = "{TARGET_MODEL}"
seed = 3
[data]
snapshot = "tiny"
labels = {list(LABELS)!r}
cache = "memory"
[transforms]
image_size = [32, 32]
[[transforms.extra]]
_target_ = "monai.transforms.RandGaussianNoised"
prob = 0.5
std = 0.02
{CLASSIFIER}
[optimizer]
_target_ = "torch.optim.SGD"
lr = 0.05
momentum = 0.9
[loss]
_target_ = "monai.losses.FocalLoss"
gamma = 2.0
[schedule]
epochs = 3
batch_size = 4
patience = 0
[evaluation]
n_bootstrap = 50
min_auroc_ci_low = 0.0
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_network_named_only_by_target_trains_registers_and_is_served(
    settings: Settings, tmp_path: Path
) -> None:
    synth = tiny_synth(tmp_path / "synth")
    build_tiny_catalog(settings, synth, "tiny")
    model_dir = tmp_path / "models" / TARGET_MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(TARGET_CONFIG, encoding="utf-8")
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["train", str(model_dir), "--device", "cpu", "--set", "schedule.epochs=1", "--json"],
    )
    assert trained.exit_code == 0, trained.output
    stdout = trained.stdout
    run = json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])[0]
    promoted = runner.invoke(
        app,
        ["models", "promote", TARGET_MODEL, run["version"], "--override-gate", "--reason", "t"],
    )
    assert promoted.exit_code == 0, promoted.output

    # The run's one configuration artifact is what rebuilds the network, override included.
    uri = settings.resolved_mlflow_tracking_uri
    logged = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run["run_id"], artifact_path="config/resolved.json", tracking_uri=uri
            )
        ).read_text()
    )
    assert logged["schedule"]["epochs"] == 1
    assert logged["network"]["_target_"] == "monai.networks.nets.Classifier"
    params = MlflowClient(tracking_uri=uri).get_run(run["run_id"]).data.params
    assert params["loss._target_"] == "monai.losses.FocalLoss"
    config = ModelConfig.model_validate(logged)
    network = network_from_config(config, len(LABELS), initial_weights=False)
    weights = mlflow.artifacts.download_artifacts(
        run_id=run["run_id"], artifact_path="weights/best.pt", tracking_uri=uri
    )
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    radiograph = next(r for r in synth.study_records if r.modality in ("CR", "DX")).files[0]
    image = build_transforms(config.transforms, train=False)(
        {"image": dataset_to_image(pydicom.dcmread(io.BytesIO(radiograph.read_bytes())))}
    )["image"]
    with torch.no_grad():
        expected = torch.sigmoid(network(image[None]))[0].tolist()

    serving = settings.model_copy(
        update={"mlflow_tracking_uri": uri, "serve_model": TARGET_MODEL, "model_poll_seconds": 0.0}
    )
    key = new_key(serving, "clinician", "clinician-1")
    with TestClient(create_app(serving)) as client:
        wait_ready(client)
        answer = client.post(
            "/v1/predict",
            content=radiograph.read_bytes(),
            headers=bearer(key) | {"Content-Type": "application/dicom"},
        )
        assert answer.status_code == 200, answer.text
        findings = answer.json()["findings"]
        assert [f["label"] for f in findings] == list(LABELS)
        assert [f["probability"] for f in findings] == pytest.approx(expected, abs=1e-5)
        models = client.get("/v1/models", headers=bearer(key))
        assert models.status_code == 200, models.text
        assert "monai.networks.nets.Classifier" in models.text
    get_settings.cache_clear()
