"""Configuration: pydantic schemas, YAML presets and ``--set dotted.key=value`` overrides.

Every command describes its settings as a :class:`MedsslConfig` subclass. :func:`load_config` resolves
a config in three layers: the schema defaults (or an explicit ``base`` mapping), a YAML preset file,
then command-line overrides. Every problem a user can cause (an unknown key, a value of the wrong type,
a malformed override, an unreadable preset) becomes one :class:`~medssl.errors.MedsslInputError` line
that names the key and what was expected, e.g.
``--set: config key 'optim.lr': expected a number, got 'abc'``.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medssl.errors import MedsslInputError
from medssl.runtime.atomic import write_text_atomic

__all__ = [
    "ACCELERATORS",
    "PRECISIONS",
    "STRATEGIES",
    "MedsslConfig",
    "RuntimeConfig",
    "config_to_dict",
    "load_config",
    "load_run_config",
    "parse_override",
    "save_config",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

SET_SOURCE = "--set"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_MAX_REPORTED_ERRORS = 3


class MedsslConfig(BaseModel):
    """Base class of every medssl configuration schema.

    Unknown keys are rejected (a typo never silently falls back to a default), assignments are
    validated, and numbers given where text is expected (``--set name=2024``) are accepted as text.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


# --------------------------------------------------------------------------------------------------
# Runtime settings shared by every training command

#: Precision strings accepted by Lightning Fabric that medssl supports.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
#: Short forms accepted for convenience, mapped the same way Lightning maps them.
_PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
#: Distribution strategies the medssl training loop supports (all keep a full model copy per process).
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
#: Accelerators; ``auto`` resolves to CUDA when available, else CPU.
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")

PrecisionName = Literal["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"]
StrategyName = Literal["auto", "ddp", "ddp_find_unused_parameters_true"]
AcceleratorName = Literal["auto", "cpu", "cuda", "gpu", "mps"]


class RuntimeConfig(MedsslConfig):
    """Where a run is written, how it is seeded and on which devices it trains.

    The run directory is ``runs_root / name``. ``checkpoint_every`` and ``log_every`` count
    optimizer iterations; ``keep_checkpoints`` bounds how many periodic checkpoints stay on disk
    (``final.pt`` and ``best.pt`` are always kept).
    """

    name: str = Field(description="Run name; the run directory is runs_root/name.")
    runs_root: Path = Field(default=Path("runs"), description="Folder holding the run directories.")
    seed: int = Field(default=1337, ge=0, lt=2**32, description="Seed of python, numpy and torch RNGs.")
    deterministic: bool = Field(default=True, description="Use deterministic algorithms (bit-exact resume on CPU).")
    accelerator: AcceleratorName = Field(default="auto", description="auto | cpu | cuda | gpu | mps.")
    devices: int | str = Field(default=1, description="Number of devices per node, -1 or 'auto' for all, or '0,1'.")
    num_nodes: int = Field(default=1, ge=1, description="Number of machines.")
    strategy: StrategyName = Field(default="auto", description="auto | ddp | ddp_find_unused_parameters_true.")
    precision: PrecisionName = Field(default="32-true", description="Lightning precision string.")
    checkpoint_every: int = Field(default=1000, ge=1, description="Iterations between checkpoints.")
    keep_checkpoints: int = Field(default=3, ge=1, description="Periodic checkpoints kept on disk.")
    log_every: int = Field(default=10, ge=1, description="Iterations between metric rows.")
    quiet: bool = Field(default=False, description="Plain log lines instead of progress bars.")
    threads: int | None = Field(default=None, ge=1, description="CPU threads of torch per process "
                                "(None: torch's default; 1 is fastest when processes share cores).")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError(f"expected a plain folder name (no '/' and not '.' or '..'), got {value!r}")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_alias(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            return _PRECISION_ALIASES.get(value, value)
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _check_devices(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a device count, 'auto' or a list like '0,1', got {value!r}")
        if isinstance(value, int):
            if value < 1 and value != -1:
                raise ValueError(f"expected a device count >= 1 (or -1 for all), got {value}")
            return value
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"-?\d+", text):
                return cls._check_devices(int(text))
            if text == "auto" or re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text):
                return text
        raise ValueError(f"expected a device count, 'auto' or a list like '0,1', got {value!r}")

    @property
    def run_dir(self) -> Path:
        """The run directory ``runs_root / name``."""
        return Path(self.runs_root) / self.name


# --------------------------------------------------------------------------------------------------
# Loading, saving


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain YAML/JSON-compatible data (paths become strings)."""
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write the resolved config as YAML to ``path`` atomically; returns ``path``."""
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_text_atomic(path, text)
    return path


def parse_override(item: str) -> tuple[str, Any]:
    """Split one ``dotted.key=value`` override; the value is parsed as YAML (``0.8``, ``true``, ``[1, 2]``).

    Raises:
        MedsslInputError: the override has no ``=``, an invalid key, or a value that is not YAML.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise MedsslInputError(SET_SOURCE, f"malformed override {item!r}: expected dotted.key=value")
    if not _KEY_RE.match(key):
        raise MedsslInputError(
            SET_SOURCE, f"malformed override {item!r}: {key!r} is not a dotted key like 'optim.lr'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        reason = str(getattr(err, "problem", None) or "not valid YAML")
        raise MedsslInputError(SET_SOURCE, f"config key {key!r}: value {raw!r} is not valid YAML ({reason})") from None
    return key, value


def load_config(
    model_cls: type[ModelT],
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> ModelT:
    """Resolve a config: defaults (or ``base``) <- YAML preset ``config_file`` <- ``--set`` overrides.

    Mappings are merged key by key; any other value (lists included) replaces the earlier one.

    Args:
        model_cls: the pydantic schema (normally a :class:`MedsslConfig` subclass).
        config_file: optional YAML preset holding a mapping.
        overrides: ``dotted.key=value`` strings, applied in order.
        base: optional starting mapping used instead of the schema defaults alone.

    Raises:
        MedsslInputError: one line naming the source (the preset or ``--set``), the key and what was
            expected.
    """
    data: dict[str, Any] = copy.deepcopy(dict(base)) if base else {}
    origins: dict[tuple[str, ...], str] = {}

    if config_file is not None:
        preset = _read_yaml_mapping(Path(config_file))
        _merge(data, preset)
        for key in _leaf_keys(preset):
            origins[key] = str(config_file)

    for item in overrides:
        key, value = parse_override(item)
        parts = tuple(key.split("."))
        _set_dotted(data, parts, value, key)
        origins[parts] = SET_SOURCE

    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        default_source = str(config_file) if config_file is not None else (SET_SOURCE if overrides else None)
        raise _as_input_error(model_cls, err, origins, default_source) from None


def load_run_config(run_dir: str | Path, model_cls: type[ModelT], required: Sequence[str], kind: str) -> ModelT:
    """The resolved config saved as ``config.yaml`` in a run directory, validated by ``model_cls``.

    Args:
        required: top-level keys that mark a run of this kind (e.g. ``("method", "data")``).
        kind: what the run is, for the error (e.g. ``"semi-supervised training run"``).

    Raises:
        MedsslInputError: not a run directory, no ``config.yaml``, or the config of another kind of run.
    """
    from medssl.runtime.rundir import RunDir

    run = RunDir.open(run_dir)
    if not run.config_yaml.is_file():
        raise MedsslInputError(run.root, "run has no config.yaml")
    data = yaml.safe_load(run.config_yaml.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise MedsslInputError(run.config_yaml, f"not a {kind} (no {' / '.join(required)})")
    return load_config(model_cls, base=data)


# --------------------------------------------------------------------------------------------------
# helpers


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MedsslInputError(path, "config file not found" if not path.exists() else "is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MedsslInputError(path, f"cannot read config file ({err.__class__.__name__})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise MedsslInputError(path, f"invalid YAML{where}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise MedsslInputError(path, f"expected a mapping of config keys at the top level, got {type(loaded).__name__}")
    return loaded


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def _leaf_keys(mapping: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    for key, value in mapping.items():
        path = (*prefix, str(key))
        keys.append(path)
        if isinstance(value, Mapping):
            keys.extend(_leaf_keys(value, path))
    return keys


def _set_dotted(data: dict[str, Any], parts: tuple[str, ...], value: Any, key: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, BaseModel):
            child = node[part] = child.model_dump()
        elif not isinstance(child, dict):
            section = ".".join(parts[: i + 1])
            raise MedsslInputError(SET_SOURCE, f"config key {key!r}: {section!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _source_for(loc: tuple[str, ...], origins: Mapping[tuple[str, ...], str], default: str | None) -> str | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return default


def _model_at(model_cls: type[BaseModel], loc: Sequence[str]) -> type[BaseModel] | None:
    """The nested schema class found by following field names ``loc`` (None when not a schema)."""
    current: Any = model_cls
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _schema_in(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _schema_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _schema_in(arg)
            if found is not None:
                return found
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_error(model_cls: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc = tuple(str(p) for p in error.get("loc", ()))
    key = ".".join(loc) or "<root>"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        parent = _model_at(model_cls, loc[:-1])
        valid = f" (valid keys: {', '.join(parent.model_fields)})" if parent is not None else ""
        return f"config key {key!r}: unknown key{valid}"
    if kind == "missing":
        return f"config key {key!r}: required but not given"
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
        return f"config key {key!r}: {message}"
    if message.startswith("Input should be "):
        message = "expected " + message[len("Input should be "):]
    elif message.startswith("Input "):
        message = "input " + message[len("Input "):]
    for noise in (", unable to parse string as a number", ", unable to parse string as an integer",
                  ", unable to interpret input"):
        message = message.replace(noise, "")
    message = message.replace("expected a valid integer", "expected an integer")
    message = message.replace("expected a valid ", "expected a ")
    for bound in ("greater than", "less than", "a multiple of"):
        message = message.replace(f"expected {bound}", f"expected a value {bound}")
    return f"config key {key!r}: {message}, got {_short(error.get('input'))}"


def _as_input_error(
    model_cls: type[BaseModel],
    err: ValidationError,
    origins: Mapping[tuple[str, ...], str],
    default_source: str | None,
) -> MedsslInputError:
    errors = err.errors(include_url=False)
    first_loc = tuple(str(p) for p in errors[0].get("loc", ()))
    source = _source_for(first_loc, origins, default_source) or model_cls.__name__
    parts = [_describe_error(model_cls, e) for e in errors[:_MAX_REPORTED_ERRORS]]
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more problem(s)")
    return MedsslInputError(source, "; ".join(parts))
