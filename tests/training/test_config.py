"""Model configuration files: the demo config loads; errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from medai.errors import ModelConfigError
from medai.training.config import apply_overrides, flatten, load_model_config

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """
name = "tiny"
[data]
snapshot = "snap"
labels = ["nodule"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    return tmp_path


def test_demo_config_loads_and_resolves_weights_against_its_directory() -> None:
    config = load_model_config(REPO / "models" / "chest-xray-triage")
    assert config.name == "chest-xray-triage"
    assert config.data.labels == ("nodule", "effusion", "cardiomegaly")
    assert config.transforms.image_size == (192, 192)
    assert config.source == REPO / "models" / "chest-xray-triage" / "config.toml"
    assert config.weights_path() is None
    with_weights = config.model_copy(
        update={"network": config.network.model_copy(update={"weights": Path("w/x.pt")})}
    )
    with_weights._source = config.source
    assert with_weights.weights_path() == REPO / "models" / "chest-xray-triage" / "w" / "x.pt"
    params = flatten(config)
    assert params["data.labels"] == "nodule,effusion,cardiomegaly"
    assert params["schedule.epochs"] == "30"
    assert params["transforms.augment.flip_prob"] == "0.0"


def test_defaults_fill_a_minimal_config(tmp_path: Path) -> None:
    config = load_model_config(_write(tmp_path, MINIMAL) / "config.toml")
    assert config.network.name == "resnet18" and config.data.cache == "memory"
    assert config.schedule.lr_schedule == "cosine"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "[schedule]\nepochs = 0\n", "schedule.epochs: Input should be greater"),
        (MINIMAL + "[network]\nname = 'vgg'\n", "network.name: unknown network 'vgg'"),
        (MINIMAL + "[data.extra]\n", "data.extra: unknown field"),
        (MINIMAL.replace('labels = ["nodule"]', "labels = []"), "data.labels: Tuple should have"),
        (MINIMAL.replace('"nodule"', '"Nodule", "x"'), "data.labels: labels are finding codes"),
        (MINIMAL.replace('"snap"', '"../x"'), "data.snapshot: snapshot names"),
        (MINIMAL + "[data.cache]\n", "data.cache: Input should be"),
        (MINIMAL.replace('name = "tiny"', ""), "config.toml: name: required field is missing"),
        (MINIMAL.replace('name = "tiny"', 'name = "a b"'), "name: model names are"),
        (MINIMAL + "[evaluation]\nmin_auroc_ci_low = 1.5\n", "evaluation.min_auroc_ci_low"),
        (MINIMAL + "[transforms]\nintensity = 'x'\n", "transforms.intensity: Input should"),
        ("name = [", "TOML syntax error"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    folder = _write(tmp_path, text)
    with pytest.raises(ModelConfigError) as caught:
        load_model_config(folder)
    message = str(caught.value)
    assert message.startswith(str(folder / "config.toml") + ": ")
    assert expected in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="no such model configuration"):
        load_model_config(tmp_path)


def test_overrides_merge_tables_validate_and_keep_the_source(tmp_path: Path) -> None:
    config = load_model_config(_write(tmp_path, MINIMAL + "[schedule]\nepochs = 9\npatience = 3\n"))
    merged = apply_overrides(config, {"schedule": {"epochs": 2}, "data": {"snapshot": "other"}})
    assert (merged.schedule.epochs, merged.schedule.patience) == (2, 3)  # merged, not replaced
    assert merged.data.snapshot == "other" and merged.data.labels == ("nodule",)
    assert merged.source == config.source
    assert config.schedule.epochs == 9  # the original is untouched
    with pytest.raises(ModelConfigError, match=r"schedule\.epochs"):
        apply_overrides(config, {"schedule": {"epochs": 0}})
    with pytest.raises(ModelConfigError, match=r"schedule\.epoch: unknown field"):
        apply_overrides(config, {"schedule": {"epoch": 2}})
