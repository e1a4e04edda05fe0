"""The import contracts of pyproject.toml hold on the tree and break on an import against them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the project's contracts on the ``medai`` found in package_parent."""
    # PYTHONPATH comes before the editable install, so `medai` is the copy under test; a wide
    # terminal keeps each contract's verdict on one line.
    env = {**os.environ, "PYTHONPATH": str(package_parent), "COLUMNS": "250"}
    selected = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(CONFIG), *selected],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", result.stdout), result.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "contract", "reported"),
    [
        pytest.param(
            "medai/dicom/read.py",
            "import medai.serving.app",
            "layers",
            [
                "medai.dicom is not allowed to import medai.serving",
                "medai.dicom.read -> medai.serving.app",
            ],
            id="dicom-imports-serving",
        ),
        pytest.param(
            "medai/collection/pipeline.py",
            "from medai.snapshots import manifest",
            "layers",
            [
                "medai.collection is not allowed to import medai.snapshots",
                "medai.collection.pipeline -> medai.snapshots.manifest",
            ],
            id="collection-imports-snapshots",
        ),
        pytest.param(
            "medai/catalog/models.py",
            "import torch",
            "no-ml-no-web-below-training",
            ["medai.catalog is not allowed to import torch", "medai.catalog.models -> torch"],
            id="catalog-imports-torch",
        ),
        pytest.param(
            "medai/training/loop.py",
            "import fastapi",
            "no-web-in-training",
            ["medai.training is not allowed to import fastapi", "medai.training.loop -> fastapi"],
            id="training-imports-fastapi",
        ),
        pytest.param(
            "medai/catalog/models.py",
            "import medai.catalog.db",
            "no-cycles",
            ["No cycles are allowed in medai.catalog.", ".models -> .db"],
            id="sibling-modules-import-each-other",
        ),
    ],
)
def test_an_import_against_the_rules_breaks_its_contract(
    tmp_path: Path, module: str, added_import: str, contract: str, reported: list[str]
) -> None:
    shutil.copytree(
        REPO / "medai", tmp_path / "medai", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = tmp_path / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{added_import}\n", encoding="utf-8")

    # Only the contract under test: the rest of the tree may be mid-change in a working copy.
    result = lint_imports(tmp_path, contract)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 1 broken." in result.stdout
    for line in reported:
        assert line in result.stdout, result.stdout
