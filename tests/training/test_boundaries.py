"""medai.training imports no web framework (DESIGN.md: training imports no fastapi)."""

from __future__ import annotations

import ast
from pathlib import Path

import medai.training

_FORBIDDEN = ("fastapi", "starlette", "uvicorn", "medai.serving")


def test_training_sources_import_no_web_framework() -> None:
    root = Path(medai.training.__file__).parent
    offenders = []
    for source in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{source.name}: {n}"
                for n in names
                if n.split(".")[0] in _FORBIDDEN or n.startswith("medai.serving")
            ]
    assert not offenders
