"""``medssl finetune detect``: Mask R-CNN fine-tuning of a pretrained ResNet encoder, COCO BoxAP / MaskAP.

Thin layer over :func:`medssl.engine.detect.train_detector`. ``detect`` is a plain function; the
``medssl`` application registers it as the ``finetune detect`` command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medssl.cli import _training as opt


def _data_overrides(data: Path) -> list[str]:
    """``--data``: a dataset folder (images + annotations.json or annotations/instances*.json) or a COCO JSON.

    A JSON inside an ``annotations/`` folder belongs to the dataset folder above it (images in
    ``<root>/images/`` or ``<root>``); any other JSON has its images beside it.
    """
    from medssl.errors import MedsslInputError

    if data.is_dir():
        return [f"data.root={data}"]
    if data.is_file():
        root = data.parent.parent if data.parent.name == "annotations" else data.parent
        return [f"data.root={root}", f"data.annotations={data}"]
    raise MedsslInputError(data, "dataset folder or COCO annotation file not found")


def detect(
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (with annotations.json, train.list, "
                                     "test.list) or a COCO instances JSON."),
    backbone: str | None = typer.Option(None, "--backbone", help="resnet18 | resnet34 | resnet50 | resnet101"),
    init: Path | None = typer.Option(None, "--init", help="Exported 2D encoder (.pt); omit to train from scratch."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a preset name: medssl presets finetune)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Training length in epochs."),
    iterations: int | None = typer.Option(None, "--iterations", help="Training length in iterations (overrides epochs)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default detect_<backbone>_<init|scratch>_s<seed>)."),
    runs_root: opt.RunsRootOption = None,
    seed: opt.SeedOption = None,
    devices: opt.DevicesOption = None,
    accelerator: opt.AcceleratorOption = None,
    precision: opt.PrecisionOption = None,
    threads: opt.ThreadsOption = None,
    set_: opt.SetOption = None,
    resume: opt.ResumeOption = False,
    overwrite: opt.OverwriteOption = False,
    quiet: opt.QuietOption = False,
) -> None:
    """Fine-tune Mask R-CNN (ResNet-FPN) from a pretrained encoder; reports COCO BoxAP and MaskAP."""
    from medssl.cli._training import resolve_training_config, runtime_flags
    from medssl.engine.detect import DetectConfig, train_detector

    flags = {"model.backbone": backbone, "epochs": epochs, "max_iterations": iterations,
             **runtime_flags(seed=seed, devices=devices, accelerator=accelerator, precision=precision,
                             threads=threads)}
    cfg, mode = resolve_training_config(
        DetectConfig, group="finetune", config=config, name=name, runs_root=runs_root, resume=resume,
        overwrite=overwrite, overrides=(_data_overrides(data) if data is not None else []) + list(set_ or ()),
        flags=flags, texts={"init": init}, quiet=quiet,
        auto_name=lambda c: f"detect_{c.model.backbone}_{Path(c.init).stem if c.init is not None else 'scratch'}"
                            f"_s{c.runtime.seed}")
    result = train_detector(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    typer.echo(f"run: {result.run_dir}")
    results_md = result.files.get("results_md")
    if results_md is not None and Path(results_md).is_file():
        typer.echo(Path(results_md).read_text(encoding="utf-8"))
