"""Mixed-precision training on the CPU, and the bfloat16 forward pass checked at training.

The training steps run under bfloat16 autocast where asked (or, with ``auto``, where the CPU
has native bfloat16 units), while validation, test predictions and the saved weights stay
float32; ``[export] bfloat16 = true`` judges the bfloat16 forward pass on the test split
with issue 16's bounds and tags the run with what it found; a network that bfloat16
rounding breaks is refused, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from medai.config import Settings
from medai.training.agreement import MAX_PROBABILITY_DIFFERENCE
from medai.training.bfloat16 import BFLOAT16_TAG, bfloat16_forward, check_bfloat16
from medai.training.config import load_model_config
from medai.training.data import IMAGE_KEY, TrainingData, build_training_data
from medai.training.networks import network_from_config
from medai.training.precision import cpu_has_native_bfloat16, training_dtype
from medai.training.tracking import TrackedRun, train_tracked
from tests.utils.research import LABELS, build_tiny_catalog, tiny_model_config, tiny_synth
from tests.utils.served_model import clean_environment

MODEL = "tiny-bf16"


@dataclass
class Run:
    settings: Settings
    tracked: TrackedRun
    data: TrainingData
    # The dtype of the first convolution's output in each training step and evaluation.
    train_dtypes: set[torch.dtype]
    eval_dtypes: set[torch.dtype]

    @property
    def client(self) -> MlflowClient:
        uri = self.settings.resolved_mlflow_tracking_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("bf16")
    train_dtypes: set[torch.dtype] = set()
    eval_dtypes: set[torch.dtype] = set()

    def watched(*args: object, **kwargs: object) -> nn.Module:
        # The network the loop trains, with a hook that notes which arithmetic ran.
        network: nn.Module = network_from_config(*args, **kwargs)  # type: ignore[arg-type]
        first = next(m for m in network.modules() if isinstance(m, nn.Conv2d))

        def note(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            (train_dtypes if module.training else eval_dtypes).add(output.dtype)

        first.register_forward_hook(note)
        return network

    with clean_environment() as patch:
        patch.setattr("medai.training.loop.network_from_config", watched)
        settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'catalog.db'}")
        build_tiny_catalog(settings, tiny_synth(root / "synth"), "tiny")
        model_dir = root / "models" / MODEL
        model_dir.mkdir(parents=True)
        text = tiny_model_config(MODEL, "tiny").replace(
            "[schedule]\n", '[schedule]\nprecision = "bfloat16"\n'
        )
        (model_dir / "config.toml").write_text(text + "[export]\nbfloat16 = true\n", "utf-8")
        config = load_model_config(model_dir)
        tracked = train_tracked(config, settings, device="cpu")
        data = build_training_data(config, settings)
    yield Run(settings, tracked, data, train_dtypes, eval_dtypes)


def test_auto_precision_follows_the_hardware_and_the_input() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = cpu_has_native_bfloat16()
    large, small, volume = (192, 192), (32, 32), (24, 128, 128)
    assert training_dtype(cpu, "auto", large) == (torch.bfloat16 if native else None)
    # Small images are bound by overheads, where bfloat16 is slower; volumes unmeasured.
    assert training_dtype(cpu, "auto", small) is None
    assert training_dtype(cpu, "auto", volume) is None
    assert training_dtype(cuda, "auto", small) == torch.float16
    assert training_dtype(cpu, "float32", large) is None
    assert training_dtype(cuda, "float32", large) is None
    assert training_dtype(cpu, "bfloat16", small) == torch.bfloat16


def test_training_steps_run_in_bfloat16_and_evaluation_in_float32(run: Run) -> None:
    assert run.train_dtypes == {torch.bfloat16}
    assert run.eval_dtypes == {torch.float32}
    # The weights the service rebuilds the network from are float32 and plain.
    result = run.tracked.result
    state = result.model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(v.is_contiguous() for v in state.values())
    assert all(torch.isfinite(torch.tensor([e.train_loss for e in result.history])))


def test_the_bfloat16_check_is_logged_with_its_figures(run: Run) -> None:
    result = run.tracked.result.bfloat16
    assert result is not None
    assert result.test_images == len(run.data.records["test"])
    # Measured, not assumed: bfloat16 rounding moves probabilities, a little.
    assert 0 < result.max_abs_prob_diff <= MAX_PROBABILITY_DIFFERENCE, result
    remote = run.client.get_run(run.tracked.run_id)
    assert remote.data.tags[BFLOAT16_TAG] == result.tag
    metrics = remote.data.metrics
    assert metrics["bfloat16/max_abs_prob_diff"] == pytest.approx(result.max_abs_prob_diff)
    assert set(result.auroc_delta) <= set(LABELS)
    for label, delta in result.auroc_delta.items():
        assert metrics[f"bfloat16/test_auroc_delta/{label}"] == pytest.approx(delta)
    # Accepted exactly when every AUROC stayed within its bound (ties on the tiny test
    # split may move one: then the tag says which).
    moved = [label for label, d in result.auroc_delta.items() if abs(d) > 0.005]
    assert result.accepted == (not moved), result
    assert (result.tag == "accepted") if not moved else all(m in result.tag for m in moved)


def test_the_bfloat16_forward_leaves_the_network_as_it_was(run: Run) -> None:
    network = run.tracked.result.model
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images = torch.cat([b[IMAGE_KEY] for b in run.data.loaders["test"]]).float()
    probabilities = bfloat16_forward(network)(images)
    with torch.inference_mode():
        expected = torch.sigmoid(network.eval()(images))
    assert probabilities.dtype == torch.float32
    assert float((probabilities - expected).abs().max()) <= MAX_PROBABILITY_DIFFERENCE
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(network.parameters()).is_contiguous()  # still float32, plain layout


class _Knife(nn.Module):
    """A network whose answer is the rounding error of its own input: exactly zero in
    float32 (probability 0.5), up to 2^-9 of the pixel in bfloat16, amplified to a logit."""

    def __init__(self, labels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, labels, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)  # a copy of the image, rounded as autocast rounds

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        error = self.conv(images).float() - images
        logits: torch.Tensor = 1e3 * error.amax(dim=(2, 3))
        return logits


def test_a_network_bfloat16_breaks_is_refused_with_the_reason(run: Run) -> None:
    config = run.tracked.result.config
    result = check_bfloat16(_Knife(len(LABELS)), config, run.data, run.settings)
    assert not result.accepted
    assert result.max_abs_prob_diff > MAX_PROBABILITY_DIFFERENCE
    assert result.reason.startswith("bfloat16 autocast: max |Δp|"), result.reason
    assert result.tag.startswith("refused: ")
