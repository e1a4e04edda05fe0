"""The MLflow store the service reads its models from (model loading and the fast path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medai.config import Settings
from medai.errors import ModelUnavailable

__all__ = ["mlflow_client"]


def mlflow_client(settings: Settings) -> Any:
    """The MLflow tracking and registry client of ``settings``; ModelUnavailable when its
    SQLite store does not exist (opening it would create an empty one)."""
    from mlflow.tracking import MlflowClient

    uri = settings.resolved_mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        # MLflow would create an empty database here; there is nothing to serve from one.
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ModelUnavailable(
                f"there is no MLflow database at {path}: train and promote a model first "
                "(`medai train`, `medai models promote`), or set MEDAI_MLFLOW_TRACKING_URI"
            )
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
