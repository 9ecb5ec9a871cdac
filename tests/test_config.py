"""medssl.config: presets, overrides, validation errors and saving."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from medssl.config import (
    PRECISIONS,
    MedsslConfig,
    RuntimeConfig,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)
from medssl.errors import MedsslInputError


class OptimConfig(MedsslConfig):
    lr: float = 0.01
    momentum: float = 0.9
    betas: list[float] = [0.9, 0.999]


class TrainConfig(MedsslConfig):
    runtime: RuntimeConfig
    optim: OptimConfig = OptimConfig()
    method: typing.Literal["corn", "ua_mt"] = "corn"
    iterations: int = 100


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_preset_and_overrides_merge(tmp_path: Path) -> None:
    preset = write(tmp_path / "p.yaml", "runtime:\n  name: la\n  seed: 5\noptim:\n  lr: 0.5\niterations: 7\n")
    cfg = load_config(TrainConfig, preset, ["optim.momentum=0.8", "runtime.deterministic=false",
                                           "optim.betas=[0.5, 0.6]", "iterations=9"])
    # preset values survive where not overridden, defaults fill the rest, overrides win
    assert cfg.runtime.name == "la" and cfg.runtime.seed == 5
    assert cfg.optim.lr == 0.5 and cfg.optim.momentum == 0.8 and cfg.optim.betas == [0.5, 0.6]
    assert cfg.runtime.deterministic is False
    assert cfg.iterations == 9
    assert cfg.method == "corn" and cfg.runtime.precision == "32-true" and cfg.runtime.runs_root == Path("runs")
    assert cfg.runtime.run_dir == Path("runs") / "la"


def test_base_mapping_is_start_point_and_not_mutated(tmp_path: Path) -> None:
    base = {"runtime": {"name": "b", "seed": 3}, "optim": {"lr": 0.2}}
    cfg = load_config(TrainConfig, None, ["runtime.seed=4"], base=base)
    assert (cfg.runtime.name, cfg.runtime.seed, cfg.optim.lr) == ("b", 4, 0.2)
    assert base == {"runtime": {"name": "b", "seed": 3}, "optim": {"lr": 0.2}}


def test_later_override_wins_and_values_are_yaml() -> None:
    cfg = load_config(TrainConfig, None, ["runtime.name=x", "optim.lr=1e-3", "optim.lr=0.25",
                                         "runtime.devices=auto", "runtime.precision=bf16"])
    assert cfg.optim.lr == 0.25
    assert cfg.runtime.devices == "auto"
    assert cfg.runtime.precision == "bf16-mixed"  # Lightning's alias
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=") == ("a", None)
    assert parse_override("name=2024") == ("name", 2024)
    # numbers are accepted where text is expected
    assert load_config(TrainConfig, None, ["runtime.name=2024"]).runtime.name == "2024"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["runtime.name=x", "optim.lr=abc"], ["--set", "'optim.lr'", "expected a number", "'abc'"]),
        (["runtime.name=x", "optim.lrr=1"], ["--set", "'optim.lrr'", "unknown key", "lr, momentum, betas"]),
        (["runtime.name=x", "method=fixmatch"], ["'method'", "'corn'", "'ua_mt'", "'fixmatch'"]),
        (["runtime.name=x", "runtime.precision=17"], ["'runtime.precision'", "'32-true'", "'17'"]),
        (["runtime.name=x", "runtime.devices=0"], ["'runtime.devices'", ">= 1"]),
        (["runtime.name=x", "runtime.seed=-1"], ["'runtime.seed'", "greater than or equal to 0"]),
        (["runtime.name=x", "runtime.strategy=fsdp"], ["'runtime.strategy'", "'ddp'", "'fsdp'"]),
        (["runtime.name=a/b"], ["'runtime.name'", "plain folder name"]),
        (["optim.lr=0.1"], ["'runtime'", "required"]),
        (["runtime.name=x", "iterations.x=1"], ["'iterations'", "expected an integer"]),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], fragments: list[str]) -> None:
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, None, overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("noequals", "expected dotted.key=value"), ("=3", "expected dotted.key=value"),
     ("a..b=1", "not a dotted key"), ("a b=1", "not a dotted key"), ("optim.betas=[1,", "not valid YAML")],
)
def test_malformed_overrides(override: str, fragment: str) -> None:
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, None, ["runtime.name=x", override])
    assert info.value.source == "--set"
    assert fragment in info.value.problem


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, None, ["runtime.name=x", "runtime.seed.low=1"], base={"runtime": {"seed": 3}})
    assert "'runtime.seed' is a value, not a section" in str(info.value)


def test_preset_errors_name_the_file(tmp_path: Path) -> None:
    bad_value = write(tmp_path / "bad.yaml", "runtime:\n  name: x\noptim:\n  lr: fast\n")
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, bad_value)
    assert info.value.source == str(bad_value)
    assert info.value.problem == "config key 'optim.lr': expected a number, got 'fast'"

    # a bad preset value overridden on the command line is fine; the error source follows the key
    assert load_config(TrainConfig, bad_value, ["optim.lr=0.3"]).optim.lr == 0.3
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, write(tmp_path / "ok.yaml", "runtime:\n  name: x\n"), ["iterations=many"])
    assert info.value.source == "--set"

    broken = write(tmp_path / "broken.yaml", "runtime:\n  name: [x\n")
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, broken)
    assert info.value.source == str(broken) and "invalid YAML at line" in info.value.problem

    listing = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(MedsslInputError, match="expected a mapping"):
        load_config(TrainConfig, listing)

    with pytest.raises(MedsslInputError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")

    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MedsslInputError) as info:
        load_config(TrainConfig, binary)
    assert info.value.source == str(binary)


def test_save_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(TrainConfig, None, ["runtime.name=rt", "runtime.runs_root=/data/runs", "optim.lr=0.125",
                                         "runtime.devices=2", "method=ua_mt"])
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    loaded = yaml.safe_load(path.read_text())
    assert loaded == config_to_dict(cfg)
    assert loaded["runtime"]["runs_root"] == "/data/runs"
    assert list(loaded) == ["runtime", "optim", "method", "iterations"]  # schema order kept
    assert load_config(TrainConfig, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left behind


def test_precisions_are_lightning_strings() -> None:
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    assert set(PRECISIONS) <= set(typing.get_args(_PRECISION_INPUT_STR))


def test_assignment_is_validated() -> None:
    rt = RuntimeConfig(name="x")
    with pytest.raises(ValueError):
        rt.log_every = 0
    with pytest.raises(ValueError):
        RuntimeConfig(name="x", unknown=1)
