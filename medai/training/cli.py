"""``medai train MODEL_DIR``, ``medai models promote NAME VERSION`` and ``medai models export``.

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
    help="Registered models in MLflow: promote a version to champion through the gate, "
    "export one as a MONAI bundle or ONNX.",
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
        Path | None,
        typer.Argument(
            help="Model directory holding config.toml (or the file itself); not with --resume."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Torch device (cuda, cpu); CUDA when available.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a configuration value (repeatable): a dotted key and a TOML value, "
            "e.g. --set schedule.epochs=5 --set 'transforms.image_size=[64, 64]' "
            "--set optimizer._target_=torch.optim.SGD. The run logs the result.",
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="RUN_ID",
            help="Continue a stopped run (its MLflow run id) from its last checkpoint, with "
            "the run's own configuration.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a model on its snapshot, log the run to MLflow, register a `candidate` version.

    Each epoch's state is checkpointed to the run: `--resume RUN_ID` continues a run that
    was stopped (killed, crashed) and ends as the uninterrupted run would have.
    """
    if resume is not None and (model_dir is not None or overrides):
        raise fail(
            "--resume RUN_ID continues the run with its own configuration: give no "
            "MODEL_DIR and no --set"
        )
    if resume is None and model_dir is None:
        raise fail("give a MODEL_DIR (holding config.toml), or --resume RUN_ID")
    # The snapshot comes from the catalog: say so before torch takes seconds to load.
    require_campaign()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from medai.errors import MedaiError
    from medai.training import distributed
    from medai.training.config import apply_overrides, load_model_config, parse_overrides
    from medai.training.loop import EpochResult
    from medai.training.tracking import load_run_config, resume_tracked, train_tracked

    try:
        if resume is not None:
            config = load_run_config(resume)
        else:
            assert model_dir is not None
            config = load_model_config(model_dir)
            if overrides:
                config = apply_overrides(config, parse_overrides(overrides))
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
            if resume is not None:
                tracked = resume_tracked(resume, progress=on_epoch, device=device)
            else:
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


@models_app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version to export.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="bundle: a MONAI bundle (configs/, models/model.pt, docs/); "
            "onnx: model.onnx (probabilities, dynamic batch).",
        ),
    ] = "bundle",
    out: Annotated[
        Path, typer.Option("--out", help="Folder to create (it must not exist, or be empty).")
    ] = Path("export"),
    as_json: JsonFlag = False,
) -> None:
    """Export VERSION of NAME as a MONAI bundle or ONNX, checked against the served model.

    The export is run on up to 8 images of the model's test split (random images at the
    model's size when its snapshot is not in this catalog) beside the network the service
    would load; a probability differing by more than 1e-4 fails the export (exit 1) and
    nothing is written.
    """
    from medai.training.export import FORMATS

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from medai.errors import ExportFailed, MedaiError
    from medai.training.export import export_model

    out_console = Console(stderr=True, quiet=as_json, markup=False, highlight=False)
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    try:
        with Progress(*columns, console=out_console, transient=True) as bar:
            task = bar.add_task(f"export {name} version {version}", total=None)
            result = export_model(
                name,
                version,
                fmt,  # checked against FORMATS above
                out,
                progress=lambda text: bar.update(task, description=text),
            )
    except ExportFailed as exc:
        raise fail(exc, "report it; the served model is unchanged", code=EXIT_PROBLEM) from None
    except (MedaiError, OSError) as exc:
        raise fail(exc) from None
    if as_json:
        print_json(jsonable(result))
        return
    console().print(
        plain(
            f"{name} version {result.version} exported as {result.format} to {result.path}: "
            + ", ".join(result.files)
        ),
        soft_wrap=True,
    )
    console().print(
        plain(
            f"check: {result.source}: max abs probability difference "
            f"{result.max_abs_difference:.2e} <= {result.tolerance:g}, same outputs as "
            "the served model"
        ),
        soft_wrap=True,
    )


@models_app.command("feedback-export")
def feedback_export_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    out: Annotated[Path, typer.Option("--out", help="CSV file to write.")] = Path("feedback.csv"),
    version: Annotated[
        str | None, typer.Option("--version", help="Only this version's predictions.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Export clinicians' feedback on NAME's predictions as labels (CSV) for the next snapshot.

    One row per prediction and clinician, in the sheet format `medai labels import` reads:
    the study's research pseudonym (PseudonymizedStudyInstanceUID, kept at prediction time
    in a campaign deployment), the label each verdict implies per finding (1/0), the final
    diagnosis code. No patient identifier is written.
    """
    require_campaign(campaign=False)

    from sqlalchemy.exc import SQLAlchemyError

    from medai.cli_support import progress_bar
    from medai.config import get_settings
    from medai.training.feedback_export import export_feedback

    try:
        with progress_bar(disable=as_json) as bar:
            task = bar.add_task(f"feedback on {name}", total=None)
            result = export_feedback(
                name,
                out,
                get_settings(),
                version=version,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror}", "choose another --out") from None
    except SQLAlchemyError as exc:
        what = f"the catalog cannot be read ({type(exc).__name__})"
        raise fail(what, "run medai doctor") from None
    if as_json:
        print_json(result)
        return
    console().print(
        plain(
            f"{result.verdicts} verdict(s) on {result.rows} prediction(s) of {name} written "
            f"to {result.path}"
            + (f" (findings: {', '.join(result.findings)})" if result.findings else "")
        ),
        soft_wrap=True,
    )
    if result.without_study:
        console().print(
            plain(
                f"{result.without_study} row(s) have no PseudonymizedStudyInstanceUID: their "
                "predictions were served without the campaign key (an inference-only "
                "deployment), so `medai labels import` cannot match them to a study"
            ),
            soft_wrap=True,
        )
