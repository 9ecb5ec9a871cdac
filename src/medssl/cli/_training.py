"""What every training command shares: preset lookup, ``--resume --name X`` reloading the run's saved
config, ``--set`` and flag overrides, and the automatic run name.

Each training command (``semi train``, ``pretrain run``, ``finetune classify``, ``finetune detect``) maps its
own options to config keys and calls :func:`resolve_training_config`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from medssl.errors import MedsslInputError
from medssl.runtime.rundir import PrepareMode

_AUTO_NAME = "__auto__"

ConfigT = TypeVar("ConfigT", bound=BaseModel)


# -- the options every training command has (typer annotations, shared help texts) ----------------
RunsRootOption = Annotated[Path | None, typer.Option("--runs-root", help="Folder of run directories (default runs/).")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
DevicesOption = Annotated[str | None, typer.Option("--devices", help="Devices per node (e.g. 2, auto).")]
NumNodesOption = Annotated[int | None, typer.Option("--num-nodes", help="Number of machines.")]
StrategyOption = Annotated[str | None, typer.Option("--strategy", help="auto | ddp")]
PrecisionOption = Annotated[str | None, typer.Option("--precision", help="32-true | bf16-mixed | 16-mixed")]
AcceleratorOption = Annotated[str | None, typer.Option("--accelerator", help="auto | cpu | cuda")]
ThreadsOption = Annotated[int | None, typer.Option("--threads", help="CPU threads of torch per process.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override any config key: dotted.key=value (repeatable).")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run from its latest checkpoint.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Delete an existing run of that name first.")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="Plain log lines instead of progress bars.")]


def preset_path(config: Path | None, group: str) -> Path | None:
    """``--config`` as given: a YAML file, or the name of a packaged preset of ``group`` (``atrium3d_corn``)."""
    from medssl.presets import preset_path as packaged_preset

    if config is None:
        return None
    if config.is_file():
        return config
    found = packaged_preset(str(config), group) if len(config.parts) == 1 else None
    if found is None:
        raise MedsslInputError(
            config, f"config file not found, nor a {group} preset of that name (medssl presets {group} lists them)")
    return found


def saved_config(name: str | None, runs_root: Path | None) -> dict[str, Any]:
    """The config saved in the run being resumed (so ``--resume --name X`` needs nothing else)."""
    import yaml

    if name is None:
        raise MedsslInputError("--resume", "give --name of the run to resume (or --config with the preset)")
    path = (runs_root or Path("runs")) / name / "config.yaml"
    if not path.is_file():
        raise MedsslInputError(path, "cannot resume: the run has no config.yaml")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _preset_run_name(preset: Path | None) -> str | None:
    import yaml

    if preset is None:
        return None
    try:
        loaded = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load_config reports the problem
    runtime = loaded.get("runtime") if isinstance(loaded, dict) else None
    return runtime.get("name") if isinstance(runtime, dict) else None


def yaml_text(value: Any) -> str:
    """``value`` as a quoted YAML string, so a ':' or '#' in a path or prompt stays text."""
    return json.dumps(str(value))  # a JSON string is a YAML string


def resolve_training_config(
    model_cls: type[ConfigT],
    *,
    group: str,
    config: Path | None,
    name: str | None,
    runs_root: Path | None,
    resume: bool,
    overwrite: bool,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    texts: Mapping[str, Any] | None = None,
    quiet: bool = False,
    auto_name: Callable[[ConfigT], str],
) -> tuple[ConfigT, PrepareMode]:
    """The resolved config of a training command and its run-directory mode.

    Order: the run's saved config (``--resume`` without ``--config``) or nothing ← the preset ←
    ``overrides`` (``--set``) ← ``flags`` (config key -> option value; None = not given) ← ``texts``
    (the same, quoted as strings). Without a run name anywhere, ``auto_name(cfg)`` names the run.

    Raises:
        MedsslInputError: both --resume and --overwrite, an unknown preset, a resumed run without a saved
            config, or an invalid value (one line naming the key).
    """
    from medssl.config import load_config
    from medssl.runtime.session import prepare_mode

    mode = prepare_mode(resume, overwrite)
    preset = preset_path(config, group)
    base: dict[str, Any] = saved_config(name, runs_root) if resume and preset is None else {}
    items = list(overrides)
    items += [f"{key}={value}" for key, value in (flags or {}).items() if value is not None]
    items += [f"{key}={yaml_text(value)}" for key, value in (texts or {}).items() if value is not None]
    if runs_root is not None:
        items.append(f"runtime.runs_root={yaml_text(runs_root)}")
    if quiet:
        items.append("runtime.quiet=true")
    if name is not None:
        items.append(f"runtime.name={yaml_text(name)}")
    elif not ((base.get("runtime") or {}).get("name") or _preset_run_name(preset)
              or any(o.startswith("runtime.name=") for o in items)):
        items.append(f"runtime.name={_AUTO_NAME}")
    cfg = load_config(model_cls, preset, items, base=base)
    runtime = cfg.runtime  # type: ignore[attr-defined]
    if runtime.name == _AUTO_NAME:
        runtime.name = auto_name(cfg)
    return cfg, mode


def runtime_flags(*, seed: int | None = None, devices: str | None = None, num_nodes: int | None = None,
                  strategy: str | None = None, precision: str | None = None, accelerator: str | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """The ``runtime.*`` config keys of the options every training command has."""
    return {"runtime.seed": seed, "runtime.devices": devices, "runtime.num_nodes": num_nodes,
            "runtime.strategy": strategy, "runtime.precision": precision, "runtime.accelerator": accelerator,
            "runtime.threads": threads}
