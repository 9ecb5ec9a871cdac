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
from typing import Any

import typer

app = typer.Typer(help="Masked image pretraining (SparK / Mask What Matters): run, export.", no_args_is_help=True)

CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"


def _preset_path(config: Path | None) -> Path | None:
    """``--config`` as given; a bare preset name (``brain2d_resnet18_guided``) is looked up in configs/pretrain/."""
    if config is None:
        return None
    if config.is_file():
        return config
    for candidate in (CONFIGS_DIR / "pretrain" / f"{config}.yaml", CONFIGS_DIR / "pretrain" / str(config)):
        if candidate.is_file():
            return candidate
    from medssl.errors import MedsslInputError

    raise MedsslInputError(config, "config file not found (nor a preset name in configs/pretrain/)")


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
    backbone: str | None = typer.Option(None, "--backbone", help="timm model (2D) or vnet (3D)."),
    dims: int | None = typer.Option(None, "--dims", help="2 (images) or 3 (volumes)."),
    image_size: int | None = typer.Option(None, "--image-size", help="2D input size (pixels)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step (all processes)."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a name in configs/pretrain/)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default <masking>_<backbone>_s<seed>)."),
    runs_root: Path | None = typer.Option(None, "--runs-root", help="Folder of run directories (default runs/)."),
    epochs: int | None = typer.Option(None, "--epochs"),
    seed: int | None = typer.Option(None, "--seed"),
    devices: str | None = typer.Option(None, "--devices", help="Devices per node (e.g. 2, auto)."),
    num_nodes: int | None = typer.Option(None, "--num-nodes"),
    strategy: str | None = typer.Option(None, "--strategy", help="auto | ddp"),
    precision: str | None = typer.Option(None, "--precision", help="32-true | bf16-mixed | 16-mixed"),
    accelerator: str | None = typer.Option(None, "--accelerator", help="auto | cpu | cuda"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads of torch per process."),
    set_: list[str] = typer.Option([], "--set", help="Override any config key: dotted.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run of that name first."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars."),
) -> None:
    """Pretrain an encoder with SparK and random or text-guided (ROI) masks."""
    from medssl.config import load_config
    from medssl.engine.pretrain import PretrainConfig, train_pretrain
    from medssl.runtime.session import prepare_mode

    mode = prepare_mode(resume, overwrite)
    base: dict[str, Any] = {"runtime": {}}
    preset = _preset_path(config)
    if resume and preset is None:
        base = _saved_config(name, runs_root)
    overrides = list(set_)
    flags = {"masking.kind": masking, "masking.ratio": ratio, "masking.ratios": None if ratios is None else _ratios(ratios),
             "masking.rule": rule, "model.backbone": backbone, "model.dims": dims, "data.image_size": image_size,
             "optim.batch_size": batch_size, "optim.epochs": epochs, "runtime.seed": seed, "runtime.devices": devices, "runtime.num_nodes": num_nodes,
             "runtime.strategy": strategy, "runtime.precision": precision, "runtime.accelerator": accelerator,
             "runtime.threads": threads}
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={value}")
    # Paths and free text go in quoted, so a ':' or '#' in them stays text.
    texts = {"data.folder": data, "data.roi_cache": roi_cache, "data.split": split, "runtime.runs_root": runs_root,
             "data.roi_prompt": roi_prompt, "data.roi_backend": roi_backend}
    for key, value in texts.items():
        if value is not None:
            overrides.append(f"{key}={_yaml_text(str(value))}")
    if allow_missing_roi:
        overrides.append("data.allow_missing_roi=true")
    if quiet:
        overrides.append("runtime.quiet=true")
    if name is not None:
        overrides.append(f"runtime.name={name}")
    elif not _has_name(base, preset, overrides):
        overrides.append("runtime.name=__auto__")
    cfg = load_config(PretrainConfig, preset, overrides, base=base)
    if cfg.runtime.name == "__auto__":
        cfg.runtime.name = f"{cfg.masking.kind}_{cfg.model.backbone}_s{cfg.runtime.seed}"
    result = train_pretrain(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    s = result.summary
    expected = s["expected_mask_ratio"]
    last = s["last_logs"]
    typer.echo(f"run: {result.run_dir}")
    typer.echo(f"{s['iterations']} iterations ({s['epochs']} epochs x {s['iterations_per_epoch']}), "
               f"{s['images']} images, peak lr {s['peak_lr']:.3g}; final loss {last.get('loss', float('nan')):.4f}")
    typer.echo(f"mask ratio: expected {expected['overall']:.3f} (fixed-count {expected['overall_fixed_count']:.3f}), "
               f"last step {last.get('mask_ratio', float('nan')):.3f}")
    if s["data"]["missing_roi"]:
        typer.echo(f"{s['data']['missing_roi']} image(s) without ROI entry were masked uniformly")


def _yaml_text(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a YAML string


def _has_name(base: dict[str, Any], preset: Path | None, overrides: list[str]) -> bool:
    import yaml

    if base.get("runtime", {}).get("name"):
        return True
    if preset is not None:
        loaded = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
        if isinstance(loaded, dict) and (loaded.get("runtime") or {}).get("name"):
            return True
    return any(o.startswith("runtime.name=") for o in overrides)


def _saved_config(name: str | None, runs_root: Path | None) -> dict[str, Any]:
    """The config saved in the run being resumed (so ``--resume --name X`` needs nothing else)."""
    import yaml

    from medssl.errors import MedsslInputError

    if name is None:
        raise MedsslInputError("--resume", "give --name of the run to resume (or --config with the preset)")
    path = (runs_root or Path("runs")) / name / "config.yaml"
    if not path.is_file():
        raise MedsslInputError(path, "cannot resume: the run has no config.yaml")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Pretraining run directory."),
    format: str = typer.Option(..., "--format", help="timm (2D runs) | vnet (3D runs)"),
    out: Path = typer.Option(..., "--out", help="Output weights file (.pt, a plain state dict)."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final | latest | an iteration number"),
) -> None:
    """Export the pretrained encoder; checks it loads strictly into timm / the V-Net encoder."""
    from medssl.engine.pretrain import export_encoder_checked

    done = export_encoder_checked(run_dir, format, out, checkpoint)  # type: ignore[arg-type]
    typer.echo(f"wrote {done.path} ({done.format}); {done.check}")
    typer.echo(f"details: {done.sidecar}")
