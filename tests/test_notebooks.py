"""The research notebooks run top to bottom through papermill on a tiny campaign (a real kernel),
and show what a researcher relies on: images, metrics, a registered and promoted version, its
errors on real test images, and an export.

The catalog, store and MLflow tracking live under the test's temporary home; the notebooks
read them from the ``MEDAI_*`` environment, or build a synthetic campaign of their own in
``HOME`` (what ``make notebooks`` does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from nbformat import NotebookNode

from medai.config import Settings, get_settings
from tests.utils.research import build_tiny_catalog, tiny_model_config, tiny_synth

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MODEL = "nb-triage"
KERNEL = "python3"

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def _kernelspec(root: Path) -> None:
    """A ``python3`` kernel spec running this interpreter (the venv's), first on JUPYTER_PATH."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "medai test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")


def _run(name: str, out: Path, **parameters: Any) -> NotebookNode:
    """Execute ``name`` with papermill (its ``parameters`` cell overridden), into ``out``."""
    source = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    tagged = [c for c in source.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: one cell tagged 'parameters' expected"
    unknown = [p for p in parameters if f"\n{p} = " not in "\n" + tagged[0].source]
    assert not unknown, f"{name} has no parameters {unknown}"
    target = out / name
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(target),
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        execution_timeout=300,
    )  # raises PapermillExecutionError, with the traceback, if a cell fails
    executed: NotebookNode = nbformat.read(target, as_version=4)  # type: ignore[no-untyped-call]
    return executed


def _text(notebook: NotebookNode) -> str:
    """Every cell's stream and plain-text output, concatenated."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "data" in output:
                parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def _figures(notebook: NotebookNode, heading: str) -> int:
    """How many PNG figures the cells after the markdown ``heading`` show (to the next one)."""
    count, inside = 0, False
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            inside = cell.source.lstrip("#").strip().startswith(heading)
            continue
        if inside:
            count += sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
    return count


@pytest.fixture
def jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "jupyter"
    _kernelspec(root)
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = tmp_path / "executed"
    out.mkdir()
    return out


def test_notebooks_execute(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jupyter: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    build_tiny_catalog(settings, tiny_synth(tmp_path / "synth"), "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    # Three epochs in the file, two through the notebook's parameter.
    (model_dir / "config.toml").write_text(tiny_model_config(MODEL, epochs=3), encoding="utf-8")

    explore = _run("01_explore_campaign.ipynb", jupyter, SNAPSHOT="tiny", EXAMPLES=2)
    text = _text(explore)
    assert "the home's own campaign" in text
    assert "no leakage" in text and "tiny: " in text
    assert _figures(explore, "Campaign progress") == 1
    # Real images: up to 2 positives and 2 negatives of each of the 3 findings (the tiny
    # snapshot has both classes of each in every split).
    shown = int(text.split(" images shown, 3 findings", 1)[0].rsplit("\n", 1)[1])
    assert 6 <= shown <= 12 and _figures(explore, "The images") == 1

    train = _run(
        "02_train_and_track.ipynb",
        jupyter,
        MODEL_DIR=str(model_dir),
        EPOCHS=2,
        IMAGE_SIZE=32,
        DEVICE="cpu",
        AUGMENTED=3,
    )
    text = _text(train)
    assert "network input (1, 32, 32)" in text
    assert _figures(train, "The inputs as the network sees them") == 1
    assert "epoch 2:" in text and "epoch 3:" not in text
    assert f"registered: {MODEL} version 1 (alias candidate)" in text
    assert _figures(train, "Per-epoch metrics") == 1

    # A gate no AUROC passes: refused, with the labels that fail; then the run's own gate.
    refused = _text(
        _run("03_evaluate_and_promote.ipynb", jupyter, MODEL_NAME=MODEL, MIN_AUROC_CI_LOW=1.01)
    )
    assert f"REFUSED: {MODEL} version 1 does not pass the promotion gate" in refused
    assert "nodule: lower CI bound of AUROC" in refused and "PROMOTED" not in refused
    export_dir = tmp_path / "exported"
    evaluate = _run(
        "03_evaluate_and_promote.ipynb",
        jupyter,
        MODEL_NAME=MODEL,
        WORST=2,
        EXPORT_DIR=str(export_dir),
    )
    text = _text(evaluate)
    assert f"{MODEL}@candidate = version 1" in text
    # The registered model on the real test images gives the probabilities its run logged.
    line = next(x for x in text.splitlines() if "reproduces the logged probabilities" in x)
    assert float(line.rsplit("within ", 1)[1]) <= 1e-4, line
    assert "test AUROC (95% CI)" in text and "roc_nodule.png" in text
    assert _figures(evaluate, "The logged evaluation") >= 3  # the logged plots
    assert "test confusion at the validation thresholds" in text
    # One figure of score distributions, then one of the worst errors per finding.
    assert _figures(evaluate, "Error analysis") == 1 + 3
    shown = int(text.split("error analysis: ", 1)[1].split()[0])
    assert shown > 0
    assert f"PROMOTED: {MODEL} version 1 is now champion" in text
    assert (export_dir / "bundle" / "configs" / "inference.json").is_file()
    assert (export_dir / "onnx" / "model.onnx").is_file()
    assert text.count("max abs probability difference") == 2


def test_explore_builds_a_synthetic_campaign_in_its_home(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jupyter: Path
) -> None:
    """``make notebooks`` on a fresh machine: the first notebook makes the campaign it shows."""
    monkeypatch.delenv("MEDAI_DATABASE_URL")  # the catalog of HOME, not the test's
    home = tmp_path / "nb-home"
    explore = _run(
        "01_explore_campaign.ipynb",
        jupyter,
        HOME=str(home),
        STUDIES=12,
        IMAGE_SIZE=32,
        SNAPSHOT="nb",
        EXAMPLES=1,
    )
    text = _text(explore)
    assert "built a synthetic campaign:" in text and "snapshot nb (" in text
    assert "no leakage" in text and _figures(explore, "The images") == 1
    assert (home / "catalog.db").is_file() and any((home / "store").iterdir())
    # Only the de-identified store is kept: the raw synthetic files were temporary.
    assert not list(home.rglob("*.dcm"))
