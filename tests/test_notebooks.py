"""The research notebooks run top to bottom on a tiny campaign (nbclient, a real kernel).

The catalog, store and MLflow tracking live under the test's temporary home; the notebooks
read them from the ``MEDAI_*`` environment, and their ``parameters`` cells are replaced with
the test's values (as papermill would inject them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import cast

import nbformat
import pytest
from nbclient import NotebookClient
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


def _run(name: str, parameters: str) -> NotebookNode:
    raw = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    notebook = cast(NotebookNode, raw)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: one cell tagged 'parameters' expected"
    # The defaults stay; the test's values follow them (as papermill's injected cell would).
    cells[0].source += "\n# Injected by the test\n" + parameters
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    return notebook


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


def _has_image(notebook: NotebookNode) -> bool:
    return any(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


def test_notebooks_execute(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    jupyter = tmp_path / "jupyter"
    _kernelspec(jupyter)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    get_settings.cache_clear()
    build_tiny_catalog(settings, tiny_synth(tmp_path / "synth"), "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    # Three epochs in the file, two through the notebook's overrides.
    (model_dir / "config.toml").write_text(tiny_model_config(MODEL, epochs=3), encoding="utf-8")

    explore = _run("01_explore_campaign.ipynb", 'SNAPSHOT = "tiny"\n')
    text = _text(explore)
    assert "no leakage" in text and "tiny: " in text
    assert _has_image(explore)  # the progress chart

    train = _run(
        "02_train_and_track.ipynb",
        f"MODEL_DIR = {str(model_dir)!r}\n"
        'OVERRIDES = {"schedule": {"epochs": 2}}\n'
        'DEVICE = "cpu"\n',
    )
    text = _text(train)
    assert "epoch 2:" in text and "epoch 3:" not in text
    assert f"registered: {MODEL} version 1 (alias candidate)" in text
    assert _has_image(train)  # the metric history

    # A gate no AUROC passes: refused, with the labels that fail; then the run's own gate.
    refused = _text(
        _run(
            "03_evaluate_and_promote.ipynb",
            f'MODEL_NAME = "{MODEL}"\nMIN_AUROC_CI_LOW = 1.01\n',
        )
    )
    assert f"REFUSED: {MODEL} version 1 does not pass the promotion gate" in refused
    assert "nodule: lower CI bound of AUROC" in refused and "PROMOTED" not in refused
    evaluate = _run("03_evaluate_and_promote.ipynb", f'MODEL_NAME = "{MODEL}"\n')
    text = _text(evaluate)
    assert f"{MODEL}@candidate = version 1" in text
    assert "test AUROC (95% CI)" in text and "roc_nodule.png" in text
    assert f"PROMOTED: {MODEL} version 1 is now champion" in text
    assert _has_image(evaluate)  # the logged plots
