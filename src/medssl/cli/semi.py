"""``medssl semi``: semi-supervised 3D segmentation (CORN and its baselines).

Thin layer over :mod:`medssl.engine.semi` (``train_semi``, ``evaluate_run``, ``predict_file``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from medssl.cli import _training as opt

app = typer.Typer(help="Semi-supervised 3D segmentation: train, evaluate, predict.", no_args_is_help=True)

#: ``--method`` help before the registry is read (importing it imports torch, so it happens only when a
#: ``semi`` sub-command runs; see :func:`_describe_methods`).
METHOD_HELP = "Semi-supervised method registered in medssl.methods (list: medssl semi methods)."


def method_help() -> str:
    """The ``--method`` help generated from the registry (plugins included)."""
    from medssl.methods import available_methods

    return f"One of: {' | '.join(available_methods())} (details: medssl semi methods)."


def _summary(cls: type) -> str:
    """First sentence of a class docstring, whitespace collapsed."""
    text = " ".join((cls.__doc__ or cls.__name__).split())
    return text.split(". ")[0].rstrip(".")


@app.callback()
def _describe_methods(ctx: typer.Context) -> None:
    """Semi-supervised 3D segmentation: train, evaluate, predict."""
    train_cmd = getattr(ctx.command, "commands", {}).get("train")
    if ctx.invoked_subcommand == "train" and train_cmd is not None:
        for param in train_cmd.params:
            if param.name == "method":
                param.help = method_help()

@app.command("train")
def train(
    method: str | None = typer.Option(None, "--method", help=METHOD_HELP),
    data: str | None = typer.Option(None, "--data", help="Data spec: la:<root>, folder:<root> or a folder."),
    labeled: int | None = typer.Option(None, "--labeled", help="Number of labeled training volumes."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a name in configs/semi/)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default <method>_<labeled>l_s<seed>)."),
    runs_root: opt.RunsRootOption = None,
    iterations: int | None = typer.Option(None, "--iterations", help="Override max_iterations."),
    seed: opt.SeedOption = None,
    init_encoder: Path | None = typer.Option(None, "--init-encoder", help="Pretrained 3D encoder weights."),
    devices: opt.DevicesOption = None,
    num_nodes: opt.NumNodesOption = None,
    strategy: opt.StrategyOption = None,
    precision: opt.PrecisionOption = None,
    accelerator: opt.AcceleratorOption = None,
    threads: opt.ThreadsOption = None,
    set_: opt.SetOption = None,
    resume: opt.ResumeOption = False,
    overwrite: opt.OverwriteOption = False,
    quiet: opt.QuietOption = False,
) -> None:
    """Train a semi-supervised segmentation method; evaluates the final checkpoint on validation cases."""
    from medssl.cli._training import resolve_training_config, runtime_flags
    from medssl.engine.semi import SemiTrainConfig, train_semi

    flags = {"method": method, "data.labeled": labeled, "max_iterations": iterations,
             **runtime_flags(seed=seed, devices=devices, num_nodes=num_nodes, strategy=strategy,
                             precision=precision, accelerator=accelerator, threads=threads)}
    cfg, mode = resolve_training_config(
        SemiTrainConfig, group="semi", config=config, name=name, runs_root=runs_root, resume=resume,
        overwrite=overwrite, overrides=set_ or (), flags=flags, texts={"data.spec": data, "init_encoder": init_encoder},
        quiet=quiet, auto_name=lambda c: f"{c.method}_{c.data.labeled}l_s{c.runtime.seed}")
    result = train_semi(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    typer.echo(f"run: {result.run_dir}")
    if result.evaluation is not None:
        _print_summary(result.evaluation)


def _print_summary(result: Any) -> None:
    summary_md = result.files.get("summary_md")
    if summary_md is not None and Path(summary_md).is_file():
        typer.echo(Path(summary_md).read_text(encoding="utf-8"))
    else:
        typer.echo(f"dice {result.mean('dice'):.4f}")


@app.command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="Run directory."),
    data: str | None = typer.Option(None, "--data", help="Data spec to score (default: the run's data)."),
    cases: Path | None = typer.Option(None, "--cases", help="Case list file to score (e.g. test.list)."),
    split: str = typer.Option("val", "--split", help="With --data and no --cases: val | all."),
    checkpoint: str = typer.Option("final", "--checkpoint",
                                   help="final (the published protocol) | best (selected on validation "
                                   "data, optimistic) | latest | an iteration number"),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default <run>/eval_<checkpoint>)."),
    largest_component: bool = typer.Option(False, "--largest-component",
                                           help="Keep the largest connected component (reported)."),
    reduced_grid: bool = typer.Option(False, "--reduced-grid",
                                      help="A run trained on resampled volumes (data.zoom): score on its "
                                      "reduced grid instead of each case's source grid (not comparable to "
                                      "published numbers)."),
    device: str | None = typer.Option(None, "--device"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Score a trained run: Dice, Jaccard, 95HD and ASD per case, in voxels and mm, on each case's
    source grid (a run trained on resampled volumes has its probabilities resampled back)."""
    from medssl.engine.semi import evaluate_run, read_run_config
    from medssl.errors import MedsslInputError

    if split not in ("val", "all"):
        raise MedsslInputError("--split", f"expected val or all, got {split!r}")
    inference = None
    if largest_component:
        inference = read_run_config(run).inference.model_copy(update={"largest_component": True})
    if checkpoint == "best":
        typer.echo("note: the 'best' checkpoint was selected on validation data; scores on those cases are "
                   "optimistic", err=True)
    result = evaluate_run(run, data=data, cases=cases, split=split, checkpoint=checkpoint, out=out,  # type: ignore[arg-type]
                          device=device, inference=inference, quiet=quiet,
                          reduced_grid=reduced_grid)
    _print_summary(result)


@app.command("predict")
def predict(
    run: Path = typer.Argument(..., help="Run directory."),
    input_path: Path = typer.Option(..., "--input", help="Scan to segment (NIfTI, NRRD, DICOM folder, HDF5)."),
    out: Path = typer.Option(..., "--out", help="Output NIfTI label map (source geometry kept)."),
    checkpoint: str = typer.Option("final", "--checkpoint"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Segment one scan with a trained run."""
    from medssl.engine.semi import predict_file

    written = predict_file(run, input_path, out, checkpoint=checkpoint, device=device)
    typer.echo(f"wrote {written}")


@app.command("methods")
def list_methods() -> None:
    """List the registered semi-supervised methods (plugins from $MEDSSL_PLUGINS included)."""
    from medssl.methods import available_methods

    for name, cls in available_methods().items():
        typer.echo(f"{name:<14} {cls.config_class.__name__:<18} {_summary(cls)}")
