"""``medai train --set KEY=VALUE``: dotted keys, TOML values, and errors before any training.

A run trained with overrides logs the overridden configuration (checked in
tests/training/test_targets.py, whose end-to-end run uses ``--set schedule.epochs=1``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medai.cli import app
from medai.config import Settings
from medai.errors import ModelConfigError
from medai.training.config import apply_overrides, load_model_config, parse_overrides
from tests.utils.campaign import init_example_campaign

CONFIG = """
name = "tiny"
[data]
snapshot = "snap"
labels = ["nodule"]
[transforms]
image_size = [32, 32]
[optimizer]
lr = 1e-3
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "config.toml").write_text(CONFIG, encoding="utf-8")
    return directory


def test_values_are_toml_and_keys_are_dotted() -> None:
    parsed = parse_overrides(
        [
            "schedule.epochs=5",
            "optimizer.lr = 3e-4",
            "transforms.image_size=[64, 64]",
            "transforms.augment.flip_prob=0.5",
            "data.cache='none'",
            "network.name=resnet34",  # not TOML: the text itself
            "optimizer._target_=torch.optim.SGD",
            "schedule.lr_schedule=none",
            "evaluation.n_bootstrap=100",
        ]
    )
    assert parsed == {
        "schedule": {"epochs": 5, "lr_schedule": "none"},
        "optimizer": {"lr": 3e-4, "_target_": "torch.optim.SGD"},
        "transforms": {"image_size": [64, 64], "augment": {"flip_prob": 0.5}},
        "data": {"cache": "none"},
        "network": {"name": "resnet34"},
        "evaluation": {"n_bootstrap": 100},
    }


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("schedule.epochs", "expected KEY=VALUE"),
        ("=5", "expected KEY=VALUE"),
        ("schedule..epochs=5", "expected KEY=VALUE"),
        ("transforms.image_size=[64, 64", "the value is not valid TOML"),
    ],
)
def test_malformed_options_are_refused(item: str, expected: str) -> None:
    with pytest.raises(ModelConfigError, match=expected):
        parse_overrides([item])
    with pytest.raises(ModelConfigError, match="schedule is set to a value, not a table"):
        parse_overrides(["schedule=1", "schedule.epochs=2"])


def test_overrides_apply_and_validate(model_dir: Path) -> None:
    config = load_model_config(model_dir)
    changed = apply_overrides(
        config,
        parse_overrides(
            ["schedule.epochs=3", "transforms.image_size=[48, 48]", "network.name=resnet34"]
        ),
    )
    assert changed.schedule.epochs == 3 and changed.transforms.image_size == (48, 48)
    assert changed.network.name == "resnet34" and changed.source == config.source
    assert changed.optimizer.lr == 1e-3  # untouched values stay
    sgd = apply_overrides(
        config, parse_overrides(["optimizer._target_=torch.optim.SGD", "optimizer.lr=0.1"])
    )
    # AdamW's weight_decay does not follow into SGD's arguments.
    assert sgd.optimizer.target == {"_target_": "torch.optim.SGD", "lr": 0.1}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["schedule.epoch=3"], "(overridden): schedule.epoch: unknown field (check its spelling)"),
        (["schedule.epochs=0"], "schedule.epochs: Input should be greater than or equal to 1"),
        (["seed=-1"], "seed: Input should be greater than or equal to 0"),
        (["network.name=vgg"], "network.name: unknown network 'vgg'"),
        (
            ["network._target_=monai.networks.nets.NoSuchNet"],
            "network._target_: unknown target 'monai.networks.nets.NoSuchNet'",
        ),
        (["schedule.epochs"], "expected KEY=VALUE"),
    ],
)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_medai_train_refuses_a_bad_override_before_training(
    settings: Settings, model_dir: Path, options: list[str], expected: str
) -> None:
    init_example_campaign(settings)
    args = ["train", str(model_dir), "--device", "cpu"]
    for option in options:
        args += ["--set", option]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert expected in " ".join(out.output.split()), out.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_resume_takes_no_model_dir_and_no_overrides(settings: Settings, model_dir: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["train", str(model_dir), "--resume", "abc"])
    assert out.exit_code == 2 and "give no MODEL_DIR and no --set" in out.output
    out = runner.invoke(app, ["train", "--resume", "abc", "--set", "seed=1"])
    assert out.exit_code == 2 and "give no MODEL_DIR and no --set" in out.output
    out = runner.invoke(app, ["train"])
    assert out.exit_code == 2 and "or --resume RUN_ID" in out.output
