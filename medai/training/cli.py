"""``medai train MODEL_DIR`` and ``medai models promote NAME VERSION``.

Heavy imports (torch, MONAI, MLflow) happen inside the commands so ``medai --help`` stays
instant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, NoReturn

import typer

__all__ = ["models_app", "register", "train_command"]

models_app = typer.Typer(
    name="models",
    help="Registered models in MLflow: promote a version to champion through the gate.",
    no_args_is_help=True,
)

# As the other sub-apps: 2 for a problem the user can fix; 1 for a refused promotion.
EXIT_USER_ERROR = 2
EXIT_REFUSED = 1


def register(app: typer.Typer) -> None:
    """Add the ``train`` command and the ``models`` sub-app to the root ``medai`` app."""
    app.command("train")(train_command)
    app.add_typer(models_app, name="models")


def _fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def train_command(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory holding config.toml (or the file itself).")
    ],
    device: Annotated[
        str | None, typer.Option(help="Torch device (cuda, cpu); CUDA when available.")
    ] = None,
) -> None:
    """Train a model on its snapshot, log the run to MLflow, register a `candidate` version."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from medai.errors import MedaiError
    from medai.training import distributed
    from medai.training.config import load_model_config
    from medai.training.loop import EpochResult
    from medai.training.tracking import train_tracked

    try:
        config = load_model_config(model_dir)
    except MedaiError as exc:
        _fail(str(exc))
    # Under torchrun every rank runs this command; rank 0 alone shows the run.
    console = Console(quiet=distributed.launcher_rank() != 0)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"train {config.name}", total=config.schedule.epochs, status="")

        def on_epoch(result: EpochResult) -> None:
            status = (
                f"loss {result.train_loss:.4f} val loss {_fmt(result.val_loss)} "
                f"val AUROC {_fmt(result.val_auroc)}{' *' if result.best else ''}"
            )
            bar.update(task, completed=result.epoch, status=status)

        try:
            tracked = train_tracked(config, progress=on_epoch, device=device)
        except (MedaiError, KeyError, ValueError) as exc:
            _fail(str(exc))
    result = tracked.result
    table = Table(title=f"{config.name}: test AUROC (best epoch {result.best_epoch})")
    for column in ("label", "n", "positive", "AUROC", "95% CI", "sens", "spec"):
        table.add_column(column, justify="left" if column == "label" else "right")
    pooled = result.evaluation.table
    for row in pooled[pooled["site"] == "all"].itertuples(index=False):
        table.add_row(
            str(row.label),
            str(row.n),
            str(row.n_positive),
            _fmt(float(row.auroc)),
            f"{_fmt(float(row.auroc_low))}-{_fmt(float(row.auroc_high))}",
            _fmt(float(row.sensitivity)),
            _fmt(float(row.specificity)),
        )
    console.print(table)
    console.print(f"run id: {tracked.run_id}")
    console.print(f"model: {tracked.model_name} version {tracked.model_version} (alias candidate)")


@models_app.command("promote")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version to promote.")],
    min_auroc_ci_low: Annotated[
        float | None,
        typer.Option(help="Gate override; default: the run's evaluation.min_auroc_ci_low."),
    ] = None,
) -> None:
    """Move the `champion` alias to VERSION if every label's lower AUROC CI bound passes."""
    from mlflow.exceptions import MlflowException

    from medai.errors import MedaiError, PromotionRefused
    from medai.training.tracking import promote

    try:
        result = promote(name, version, min_auroc_ci_low=min_auroc_ci_low)
    except PromotionRefused as exc:
        _fail(str(exc), EXIT_REFUSED)
    except (MedaiError, MlflowException) as exc:
        _fail(str(exc))
    lows = ", ".join(f"{label} {low:.3f}" for label, low in result.ci_low.items())
    previous = f" (was version {result.previous})" if result.previous else ""
    typer.echo(
        f"{name} version {result.version} is now champion{previous}; "
        f"lower AUROC CI bounds {lows} >= {result.required:.3f}"
    )
