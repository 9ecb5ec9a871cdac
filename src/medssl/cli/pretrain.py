"""``medssl pretrain``: masked image pretraining (SparK, Mask What Matters) and encoder export.

Thin layer over :mod:`medssl.engine.pretrain` (``train_pretrain``, ``export_encoder_checked``)::

    medssl pretrain run --data DIR --roi-cache DIR --masking guided --ratios 0.8,0.4 --backbone resnet50
    medssl pretrain run --data DIR --masking random --ratio 0.7
    medssl pretrain run --config atrium3d_vnet_guided --data DIR --roi-cache DIR     # --dims 3 in the preset
    medssl pretrain export runs/NAME --format timm --out encoder.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medssl.cli import _training as opt

app = typer.Typer(help="Masked image pretraining (SparK / Mask What Matters): run, export.", no_args_is_help=True)

def _ratios(text: str) -> str:
    """``"0.8,0.4"`` -> ``"[0.8, 0.4]"`` (a YAML list for the override)."""
    from medssl.errors import MedsslInputError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise MedsslInputError("--ratios", f"expected two ratios 'r_roi,r_bg' (e.g. 0.8,0.4), got {text!r}")
    return f"[{parts[0]}, {parts[1]}]"


@app.command("run")
def run(
    data: Path | None = typer.Option(None, "--data", help="Image folder (images/ layout or plain folder)."),
    roi_cache: Path | None = typer.Option(None, "--roi-cache", help="ROI cache folder (medssl localize run)."),
    roi_prompt: str | None = typer.Option(None, "--roi-prompt", help="Use the ROI entries of this prompt."),
    roi_backend: str | None = typer.Option(None, "--roi-backend", help="Use the ROI entries of this backend."),
    allow_missing_roi: bool = typer.Option(False, "--allow-missing-roi",
                                           help="Images without ROI entry are masked uniformly (background ratio)."),
    split: str | None = typer.Option(None, "--split", help="train (default if train.list exists) | all | a list file."),
    masking: str | None = typer.Option(None, "--masking", help="random | guided"),
    ratio: float | None = typer.Option(None, "--ratio", help="random masking: fraction of patches masked."),
    ratios: str | None = typer.Option(None, "--ratios", help="guided masking: r_roi,r_bg (e.g. 0.8,0.4)."),
    rule: str | None = typer.Option(None, "--rule", help="ROI patch rule: topleft | any | center | fraction>=t"),
    counts: str | None = typer.Option(None, "--counts", help="guided masking: kept-patch counts, floor (the "
                                      "spec's rule) | stochastic (unbiased; for coarse grids)."),
    backbone: str | None = typer.Option(None, "--backbone", help="timm model (2D) or vnet (3D)."),
    dims: int | None = typer.Option(None, "--dims", help="2 (images) or 3 (volumes)."),
    image_size: int | None = typer.Option(None, "--image-size", help="2D input size (pixels)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step (all processes)."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a name in configs/pretrain/)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default <masking>_<backbone>_s<seed>)."),
    runs_root: opt.RunsRootOption = None,
    epochs: int | None = typer.Option(None, "--epochs"),
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
    """Pretrain an encoder with SparK and random or text-guided (ROI) masks."""
    from medssl.cli._training import resolve_training_config, runtime_flags
    from medssl.engine.pretrain import PretrainConfig, train_pretrain

    flags = {"masking.kind": masking, "masking.ratio": ratio, "masking.ratios": None if ratios is None else _ratios(ratios),
             "masking.rule": rule, "masking.counts": counts, "model.backbone": backbone, "model.dims": dims, "data.image_size": image_size,
             "optim.batch_size": batch_size, "optim.epochs": epochs,
             "data.allow_missing_roi": True if allow_missing_roi else None,
             **runtime_flags(seed=seed, devices=devices, num_nodes=num_nodes, strategy=strategy,
                             precision=precision, accelerator=accelerator, threads=threads)}
    texts = {"data.folder": data, "data.roi_cache": roi_cache, "data.split": split, "data.roi_prompt": roi_prompt,
             "data.roi_backend": roi_backend}
    cfg, mode = resolve_training_config(
        PretrainConfig, group="pretrain", config=config, name=name, runs_root=runs_root, resume=resume,
        overwrite=overwrite, overrides=set_ or (), flags=flags, texts=texts, quiet=quiet,
        auto_name=lambda c: f"{c.masking.kind}_{c.model.backbone}_s{c.runtime.seed}")
    result = train_pretrain(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    s = result.summary
    expected = s["expected_mask_ratio"]
    last = s["last_logs"]
    typer.echo(f"run: {result.run_dir}")
    typer.echo(f"{s['iterations']} iterations ({s['epochs']} epochs x {s['iterations_per_epoch']}), "
               f"{s['images']} images, peak lr {s['peak_lr']:.3g}; final loss {last.get('loss', float('nan')):.4f}")
    counts = "stochastic counts" if cfg.masking.kind == "guided" and cfg.masking.counts == "stochastic" \
        else "fixed-count"
    typer.echo(f"mask ratio: expected {expected['overall']:.3f} ({counts} {expected['overall_fixed_count']:.3f}), "
               f"last step {last.get('mask_ratio', float('nan')):.3f}")
    if s["data"]["missing_roi"]:
        typer.echo(f"{s['data']['missing_roi']} image(s) without ROI entry were masked uniformly")


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Pretraining run directory."),
    format: str = typer.Option(..., "--format", help="timm (2D runs) | vnet (3D runs)"),
    out: Path = typer.Option(..., "--out", help="Output weights file (.pt, a plain state dict)."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final | latest | an iteration number"),
) -> None:
    """Export the pretrained encoder; checks it loads strictly into timm / the V-Net encoder."""
    from medssl.engine.pretrain_export import export_encoder_checked

    done = export_encoder_checked(run_dir, format, out, checkpoint)  # type: ignore[arg-type]
    typer.echo(f"wrote {done.path} ({done.format}); {done.check}")
    typer.echo(f"details: {done.sidecar}")
