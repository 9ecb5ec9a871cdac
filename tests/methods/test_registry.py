"""The method registry: a method defined in one file outside medssl trains through the command line;
``method_config`` is typed by the registered method; capabilities replace method-name branches."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medssl.cli import app, main
from medssl.config import load_config
from medssl.engine.semi import SemiTrainConfig, resolve_method_settings
from medssl.errors import MedsslInputError
from medssl.methods import CornConfig, SupervisedMethod, available_methods, register_method, registry
from medssl.runtime.metrics_log import read_metrics

HERE = Path(__file__).resolve().parent


@pytest.fixture()
def toy_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``MEDSSL_PLUGINS=toy_method`` with this folder importable; the registry is restored afterwards."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv(registry.PLUGINS_ENV, "toy_method")
    yield "toy_method"
    registry.METHODS.pop("toy", None)
    registry._loaded_plugins.discard("toy_method")
    sys.modules.pop("toy_method", None)


@pytest.fixture(scope="module")
def atrium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medssl.data.synthetic import synthesize

    return synthesize("atrium3d", tmp_path_factory.mktemp("data") / "atrium3d", n=5, seed=4, shape=(32, 32, 16))


def test_plugin_method_trains_two_iterations_through_the_cli(toy_plugin: str, atrium: Path, tmp_path: Path) -> None:
    assert "toy" not in registry.METHODS  # nothing registered it before the plugin hook ran
    main(["semi", "train", "--method", "toy", "--data", f"folder:{atrium}", "--labeled", "2",
          "--iterations", "2", "--runs-root", str(tmp_path), "--name", "toy", "--quiet", "--accelerator", "cpu",
          "--set", "method_config.weight=0.25", "--set", "data.n_val=1", "--set", "data.patch=[16,16,16]",
          "--set", "data.labeled_bs=1", "--set", "data.unlabeled_bs=1", "--set", "runtime.log_every=1",
          "--set", "inference.patch=[16,16,16]", "--set", "inference.stride=[16,16,16]"])
    run = tmp_path / "toy"
    rows = read_metrics(run / "metrics.csv")
    assert [r["iteration"] for r in rows if r.get("loss_entropy") is not None] == [1, 2]
    for r in rows:  # the plugin's logs reach the metrics file: loss = CE + 0.25 entropy
        if r.get("loss_entropy") is not None:
            assert r["loss"] == pytest.approx(r["loss_sup"] + 0.25 * r["loss_entropy"], rel=1e-5)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "toy"
    assert saved["method_config"] == {"weight": 0.25, "n_classes": 2}  # typed: defaults resolved
    assert (run / "checkpoints" / "final.pt").is_file()
    assert (run / "eval_final" / "summary.json").is_file()  # evaluated with the plugin's network


def test_cli_lists_and_documents_registered_methods(toy_plugin: str) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["semi", "methods"])
    assert listed.exit_code == 0, listed.output
    names = [line.split()[0] for line in listed.output.splitlines() if line.strip()]
    assert names == ["caml", "corn", "dual_branch", "mean_teacher", "supervised", "toy", "ua_mt"]
    assert "ToyConfig" in listed.output and "Entropy minimisation" in listed.output
    helped = runner.invoke(app, ["semi", "train", "--help"])
    assert helped.exit_code == 0, helped.output
    text = "".join(helped.output.replace("│", " ").split())  # the help table wraps lines
    assert "Oneof:caml|corn|dual_branch|mean_teacher|supervised|toy|ua_mt" in text


def test_method_config_is_typed_by_the_registered_method() -> None:
    base = {"runtime": {"name": "x"}, "data": {"spec": "folder:nowhere"}}
    cfg = load_config(SemiTrainConfig, "configs/semi/la_corn.yaml", ["method_config.coral_weight=0.1"], base=base)
    assert isinstance(cfg.method_config, CornConfig)
    assert cfg.method_config.coral_weight == 0.1 and cfg.method_config.embed_dim == 32
    with pytest.raises(MedsslInputError, match=r"method_config.*CornConfig.*bogus"):
        load_config(SemiTrainConfig, overrides=["method_config.bogus=1"], base=base)
    with pytest.raises(MedsslInputError, match="expected one of caml, corn"):
        load_config(SemiTrainConfig, overrides=["method=nope"], base=base)
    sup = load_config(SemiTrainConfig, overrides=["method=supervised"], base=base)
    assert type(sup.method_config).__name__ == "SupervisedConfig"


def test_run_settings_fill_only_unset_fields() -> None:
    base = {"runtime": {"name": "x"}, "data": {"spec": "folder:nowhere", "labeled": 4}, "max_iterations": 77}
    filled = resolve_method_settings(load_config(SemiTrainConfig, base=base))
    assert filled.method_config.n_labeled == 4
    kept = resolve_method_settings(load_config(SemiTrainConfig, overrides=["method_config.n_labeled=9"], base=base))
    assert kept.method_config.n_labeled == 9
    ua = resolve_method_settings(load_config(SemiTrainConfig, overrides=["method=ua_mt"], base=base))
    assert ua.method_config.max_iterations == 77


def test_capabilities_are_class_attributes() -> None:
    assert SupervisedMethod.needs_unlabeled is False
    assert all(cls.needs_unlabeled for name, cls in available_methods().items() if name != "supervised")


def test_register_rejects_a_taken_name_and_a_missing_config() -> None:
    from medssl.methods import SemiMethod

    class Other(SemiMethod):
        config_class = CornConfig

    with pytest.raises(ValueError, match="'corn' is taken"):
        register_method("corn")(Other)

    class NoConfig(SemiMethod):
        pass

    with pytest.raises(ValueError, match="config_class"):
        register_method("no_config")(NoConfig)
    assert "no_config" not in registry.METHODS


def test_a_missing_plugin_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.PLUGINS_ENV, "no_such_medssl_plugin")
    with pytest.raises(MedsslInputError, match="cannot import plugin module 'no_such_medssl_plugin'"):
        available_methods()
