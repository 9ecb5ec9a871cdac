"""``medssl finetune``: fine-tuning pretrained encoders on labelled downstream tasks.

``classify`` is a thin layer over :func:`medssl.engine.classify.train_classifier`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Fine-tune pretrained encoders: classification.", no_args_is_help=True)

CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"


def _preset_path(config: Path | None) -> Path | None:
    """``--config`` as given; a bare preset name (``classify_brain2d_resnet18``) is looked up in configs/finetune/."""
    if config is None:
        return None
    if config.is_file():
        return config
    for candidate in (CONFIGS_DIR / "finetune" / f"{config}.yaml", CONFIGS_DIR / "finetune" / str(config)):
        if candidate.is_file():
            return candidate
    from medssl.errors import MedsslInputError

    raise MedsslInputError(config, "config file not found (nor a preset name in configs/finetune/)")


def _saved_config(name: str | None, runs_root: Path | None) -> dict[str, Any]:
    """The config saved in the run being resumed (so ``--resume --name X`` needs nothing else)."""
    import yaml

    from medssl.errors import MedsslInputError

    if name is None:
        raise MedsslInputError("--resume", "give --name of the run to resume (or --config with the preset)")
    path = (runs_root or Path("runs")) / name / "config.yaml"
    if not path.is_file():
        raise MedsslInputError(path, "cannot resume: the run has no config.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _preset_name(preset: Path | None) -> str | None:
    import yaml

    if preset is None:
        return None
    try:
        data = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load_config reports the problem
    runtime = data.get("runtime") if isinstance(data, dict) else None
    return runtime.get("name") if isinstance(runtime, dict) else None


@app.command("classify")
def classify(
    data: str | None = typer.Option(None, "--data", help="csv:<classes.csv> or imagefolder:<root>."),
    backbone: str | None = typer.Option(None, "--backbone", help="timm model name (e.g. resnet18, resnet50)."),
    init: Path | None = typer.Option(None, "--init", help="Exported pretrained encoder (timm state dict)."),
    config: Path | None = typer.Option(None, "--config", help="YAML preset (a file or a name in configs/finetune/)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the number of epochs."),
    name: str | None = typer.Option(None, "--name", help="Run name (default classify_<backbone>_<init|scratch>_s<seed>)."),
    runs_root: Path | None = typer.Option(None, "--runs-root", help="Folder of run directories (default runs/)."),
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
    """Fine-tune a timm classifier; reports the best epoch (selected on validation) and the final epoch."""
    from medssl.config import load_config
    from medssl.engine.classify import ClassifyConfig, train_classifier
    from medssl.runtime.session import prepare_mode

    mode = prepare_mode(resume, overwrite)
    base: dict[str, Any] = {"runtime": {}, "data": {}}
    preset = _preset_path(config)
    if resume and preset is None:
        base = _saved_config(name, runs_root)
    overrides = list(set_)
    flags = {"data.spec": data, "model.backbone": backbone, "init": init, "epochs": epochs,
             "runtime.runs_root": runs_root, "runtime.seed": seed, "runtime.devices": devices,
             "runtime.num_nodes": num_nodes, "runtime.strategy": strategy, "runtime.precision": precision,
             "runtime.accelerator": accelerator, "runtime.threads": threads}
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={value}")
    if quiet:
        overrides.append("runtime.quiet=true")
    if name is not None:
        overrides.append(f"runtime.name={name}")
    elif not ((base.get("runtime") or {}).get("name") or _preset_name(preset)
              or any(o.startswith("runtime.name=") for o in overrides)):
        overrides.append("runtime.name=__auto__")
    cfg = load_config(ClassifyConfig, preset, overrides, base=base)
    if cfg.runtime.name == "__auto__":
        cfg.runtime.name = (f"classify_{cfg.model.backbone}_{'init' if cfg.init is not None else 'scratch'}"
                            f"_s{cfg.runtime.seed}")
    result = train_classifier(cfg, mode, command=sys.argv)
    if result.global_rank != 0:
        return
    typer.echo(f"run: {result.run_dir}")
    summary = result.run_dir / "results.md"
    if summary.is_file():
        typer.echo(summary.read_text(encoding="utf-8").rstrip())
