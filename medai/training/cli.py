"""``medai train MODEL_DIR`` and ``medai models promote NAME VERSION``.

Heavy imports (torch, MONAI, MLflow) happen inside the commands so ``medai --help`` stays
instant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from medai.cli_support import (
    EXIT_PROBLEM,
    JsonFlag,
    console,
    fail,
    jsonable,
    plain,
    print_json,
    require_campaign,
    row,
)

__all__ = ["models_app", "register", "train_command"]

models_app = typer.Typer(
    name="models",
    help="Registered models in MLflow: promote a version to champion through the gate.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command and the ``models`` sub-app to the root ``medai`` app."""
    app.command("train")(train_command)
    app.add_typer(models_app, name="models")


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def train_command(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory holding config.toml (or the file itself).")
    ],
    device: Annotated[
        str | None, typer.Option(help="Torch device (cuda, cpu); CUDA when available.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a model on its snapshot, log the run to MLflow, register a `candidate` version."""
    # The snapshot comes from the catalog: say so before torch takes seconds to load.
    require_campaign()

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
        raise fail(exc) from None
    # Under torchrun every rank runs this command; rank 0 alone shows the run.
    quiet = distributed.launcher_rank() != 0
    out = Console(quiet=quiet or as_json, markup=False, highlight=False)
    columns = (
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as bar:
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
            raise fail(exc) from None
    result = tracked.result
    pooled = result.evaluation.table
    pooled = pooled[pooled["site"] == "all"]
    if as_json:
        if not quiet:
            print_json(
                {
                    "run_id": tracked.run_id,
                    "model": tracked.model_name,
                    "version": tracked.model_version,
                    "best_epoch": result.best_epoch,
                    "test": pooled.to_dict(orient="records"),
                }
            )
        return
    table = Table(title=plain(f"{config.name}: test AUROC (best epoch {result.best_epoch})"))
    for column in ("label", "n", "positive", "AUROC", "95% CI", "sens", "spec"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for line in pooled.itertuples(index=False):
        table.add_row(
            *row(
                line.label,
                line.n,
                line.n_positive,
                _fmt(float(line.auroc)),
                f"{_fmt(float(line.auroc_low))}-{_fmt(float(line.auroc_high))}",
                _fmt(float(line.sensitivity)),
                _fmt(float(line.specificity)),
            )
        )
    out.print(table)
    out.print(f"run id: {tracked.run_id}")
    out.print(f"model: {tracked.model_name} version {tracked.model_version} (alias candidate)")


@models_app.command("promote")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version to promote.")],
    min_auroc_ci_low: Annotated[
        float | None,
        typer.Option(
            help="A stricter absolute gate than the run's evaluation.min_auroc_ci_low "
            "(a lower one is refused: lowering the bar is an override)."
        ),
    ] = None,
    override_gate: Annotated[
        bool,
        typer.Option(
            "--override-gate",
            help="Promote even though the gate refuses; needs --reason. Audited, and tagged "
            "on the version (shown by GET /v1/models).",
        ),
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why the gate is overridden (on the record).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Move the `champion` alias to VERSION if it passes the gate.

    The gate: every label's lower AUROC CI bound at least the run's configured gate, per-site
    floors where a site has enough positives, and not significantly worse than the current
    champion on the test cases both predicted (MEDAI_GATE_MARGIN). Refused: exit 1 with
    each failed check; `--override-gate --reason TEXT` promotes anyway, on the record.
    """
    if override_gate and not (reason or "").strip():
        raise fail("--override-gate needs --reason TEXT: why the gate is overridden")
    if reason and not override_gate:
        raise fail("--reason goes with --override-gate")
    # Promotions are audited in the catalog the model's snapshot came from.
    require_campaign()

    from mlflow.exceptions import MlflowException

    from medai.errors import MedaiError, PromotionRefused
    from medai.training.registry import promote

    try:
        result = promote(
            name,
            version,
            min_auroc_ci_low=min_auroc_ci_low,
            override_gate=override_gate,
            reason=reason,
        )
    except PromotionRefused as exc:
        raise fail(
            exc,
            "`--override-gate --reason TEXT` promotes it anyway, on the record",
            code=EXIT_PROBLEM,
        ) from None
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise fail(
                f"no version {version} of a model {name!r} is registered: "
                "run `medai train MODEL_DIR` first"
            ) from None
        raise fail(exc) from None
    except MedaiError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(jsonable(result))
        return
    lows = ", ".join(f"{label} {low:.3f}" for label, low in result.ci_low.items())
    previous = f" (was version {result.previous})" if result.previous else ""
    how = (
        f"the gate was OVERRIDDEN (reason: {result.reason})"
        if result.overridden
        else f"lower AUROC CI bounds {lows} >= {result.required:.3f}"
    )
    console().print(
        plain(f"{name} version {result.version} is now champion{previous}; {how}"),
        soft_wrap=True,
    )
