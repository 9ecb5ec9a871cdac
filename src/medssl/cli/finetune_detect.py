"""``medssl finetune detect``: Mask R-CNN fine-tuning of a pretrained ResNet encoder, COCO BoxAP / MaskAP.

Thin layer over :func:`medssl.engine.detect.train_detector`. ``detect`` is a plain function; the
``medssl`` application registers it as the ``finetune detect`` command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"
PRESET_FOLDER = "finetune"


def _preset_path(config: Path | None) -> Path | None:
    """``--config`` as given; a bare preset name (``detect_brain2d_r18``) is looked up in configs/finetune/."""
    if config is None:
        return None
    if config.is_file():
        return config
    for candidate in (CONFIGS_DIR / PRESET_FOLDER / f"{config}.yaml", CONFIGS_DIR / PRESET_FOLDER / str(config)):
        if candidate.is_file():
            return candidate
    from medssl.errors import MedsslInputError

    raise MedsslInputError(config, f"config file not found (nor a preset name in configs/{PRESET_FOLDER}/)")


def _data_overrides(data: Path) -> list[str]:
    """``--data``: a dataset folder (images + annotations.json) or a COCO JSON (images beside it)."""
    from medssl.errors import MedsslInputError

    if data.is_dir():
        return [f"data.root={data}"]
    if data.is_file():
        return [f"data.root={data.parent}", f"data.annotations={data}"]
    raise MedsslInputError(data, "dataset folder or COCO annotation file not found")


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


def _named(base: dict[str, Any], preset: Path | None, overrides: list[str]) -> bool:
    import yaml

    if (base.get("runtime") or {}).get("name"):
        return True
    if preset is not None:
        loaded = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
        if isinstance(loaded, dict) and (loaded.get("runtime") or {}).get("name"):
            return True
    return any(o.startswith("runtime.name=") for o in overrides)


def detect(
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (with annotations.json, train.list, "
                                     "test.list) or a COCO instances JSON."),
    backbone: str | None = typer.Option(None, "--backbone", help="resnet18 | resnet34 | resnet50 | resnet101"),
    init: Path | None = typer.Option(None, "--init", help="Exported 2D encoder (.pt); omit to train from scratch."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a name in configs/finetune/)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Training length in epochs."),
    iterations: int | None = typer.Option(None, "--iterations", help="Training length in iterations (overrides epochs)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default detect_<backbone>_<init|scratch>_s<seed>)."),
    runs_root: Path | None = typer.Option(None, "--runs-root", help="Folder of run directories (default runs/)."),
    seed: int | None = typer.Option(None, "--seed"),
    devices: str | None = typer.Option(None, "--devices", help="Devices per node (e.g. 2, auto)."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="auto | cpu | cuda"),
    precision: str | None = typer.Option(None, "--precision", help="32-true | bf16-mixed | 16-mixed"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads of torch per process."),
    set_: list[str] = typer.Option([], "--set", help="Override any config key: dotted.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run of that name first."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars."),
) -> None:
    """Fine-tune Mask R-CNN (ResNet-FPN) from a pretrained encoder; reports COCO BoxAP and MaskAP."""
    from medssl.config import load_config
    from medssl.engine.detect import DetectConfig, train_detector
    from medssl.runtime.session import prepare_mode

    mode = prepare_mode(resume, overwrite)
    base: dict[str, Any] = {"runtime": {}, "data": {}}
    preset = _preset_path(config)
    if resume and preset is None:
        base = _saved_config(name, runs_root)
    overrides = _data_overrides(data) if data is not None else []
    overrides += list(set_)
    flags = {"model.backbone": backbone, "init": init, "epochs": epochs, "max_iterations": iterations,
             "runtime.runs_root": runs_root, "runtime.seed": seed, "runtime.devices": devices,
             "runtime.accelerator": accelerator, "runtime.precision": precision, "runtime.threads": threads}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    if quiet:
        overrides.append("runtime.quiet=true")
    if name is not None:
        overrides.append(f"runtime.name={name}")
    elif not _named(base, preset, overrides):
        overrides.append("runtime.name=__auto__")
    cfg = load_config(DetectConfig, preset, overrides, base=base)
    if cfg.runtime.name == "__auto__":
        source = Path(cfg.init).stem if cfg.init is not None else "scratch"
        cfg.runtime.name = f"detect_{cfg.model.backbone}_{source}_s{cfg.runtime.seed}"
    result = train_detector(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    typer.echo(f"run: {result.run_dir}")
    results_md = result.files.get("results_md")
    if results_md is not None and Path(results_md).is_file():
        typer.echo(Path(results_md).read_text(encoding="utf-8"))
