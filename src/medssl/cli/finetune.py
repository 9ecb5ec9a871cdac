"""``medssl finetune``: fine-tuning pretrained encoders on labelled downstream tasks.

``classify`` is a thin layer over :func:`medssl.engine.classify.train_classifier`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medssl.cli import _training as opt

app = typer.Typer(help="Fine-tune pretrained encoders: classification and Mask R-CNN detection.", no_args_is_help=True)

@app.command("classify")
def classify(
    data: str | None = typer.Option(None, "--data", help="csv:<classes.csv> or imagefolder:<root>."),
    backbone: str | None = typer.Option(None, "--backbone", help="timm model name (e.g. resnet18, resnet50)."),
    init: Path | None = typer.Option(None, "--init", help="Exported pretrained encoder (timm state dict)."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a preset name: medssl presets finetune)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the number of epochs."),
    name: str | None = typer.Option(None, "--name", help="Run name (default classify_<backbone>_<init|scratch>_s<seed>)."),
    runs_root: opt.RunsRootOption = None,
    seed: opt.SeedOption = None,
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
    """Fine-tune a timm classifier; reports the best epoch (selected on validation) and the final epoch."""
    from medssl.cli._training import resolve_training_config, runtime_flags
    from medssl.engine.classify import ClassifyConfig, train_classifier

    flags = {"model.backbone": backbone, "epochs": epochs,
             **runtime_flags(seed=seed, devices=devices, num_nodes=num_nodes, strategy=strategy,
                             precision=precision, accelerator=accelerator, threads=threads)}
    cfg, mode = resolve_training_config(
        ClassifyConfig, group="finetune", config=config, name=name, runs_root=runs_root, resume=resume,
        overwrite=overwrite, overrides=set_ or (), flags=flags, texts={"data.spec": data, "init": init}, quiet=quiet,
        auto_name=lambda c: (f"classify_{c.model.backbone}_{'init' if c.init is not None else 'scratch'}"
                             f"_s{c.runtime.seed}"))
    result = train_classifier(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    typer.echo(f"run: {result.run_dir}")
    summary = result.run_dir / "results.md"
    if summary.is_file():
        typer.echo(summary.read_text(encoding="utf-8").rstrip())
