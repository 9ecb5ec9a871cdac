"""The built wheel, installed non-editable into a fresh virtual environment, runs from any folder.

The wheel is built once per module from a copy of the project (nothing is written into the checkout) and
installed with ``--no-deps`` into a new venv that sees the already-installed dependencies through a
``.pth`` file listing this interpreter's ``site-packages`` folders (a ``.pth`` line only adds a folder to
``sys.path``; the editable-install hooks inside those folders are not run, so the source tree stays out).
Every command then runs in an unrelated working directory: the presets must come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel of this checkout (returns its ``bin`` folder)."""
    root = tmp_path_factory.mktemp("wheel")
    project = root / "project"
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
              "-w", str(root / "dist"), str(project)], cwd=root))
    (wheel,) = (root / "dist").glob("medssl-*.whl")
    env_dir = root / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=root))
    (site,) = env_dir.glob("lib/python*/site-packages")
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (site / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    _ok(_run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--no-deps",
              "--no-index", "-q", str(wheel)], cwd=root))
    return env_dir / "bin"


@pytest.fixture(scope="module")
def workdir(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unrelated folder holding ``data/atrium3d`` (the folder the atrium3d presets name)."""
    work = tmp_path_factory.mktemp("elsewhere")
    _ok(_run([str(venv / "medssl"), "data", "synth", "atrium3d", "--out", "data/atrium3d", "--n", "10",
              "--seed", "0", "--shape", "64,64,48", "--quiet"], cwd=work))
    return work


def test_the_installed_package_is_the_wheel_not_the_checkout(venv: Path, workdir: Path) -> None:
    where = _ok(_run([str(venv / "python"), "-c", "import medssl, medssl.presets as p; "
                      "print(medssl.__file__); print(p.preset_path('atrium3d_corn', 'semi'))"], cwd=workdir))
    module, preset = (Path(line) for line in where.splitlines())
    installed = venv.parent.resolve()
    assert module.resolve().is_relative_to(installed) and not module.resolve().is_relative_to(REPO)
    assert preset.resolve().is_relative_to(installed) and preset.is_file()
    listed = _ok(_run([str(venv / "medssl"), "presets", "semi"], cwd=workdir)).splitlines()
    assert len(listed) == 12 and any(line.startswith("semi/la_corn  Left-atrium benchmark") for line in listed)


def test_semi_train_with_a_packaged_preset(venv: Path, workdir: Path) -> None:
    out = _ok(_run([str(venv / "medssl"), "semi", "train", "--config", "atrium3d_corn", "--iterations", "2",
                    "--quiet"], cwd=workdir))
    run = workdir / "runs" / "corn_4l_s1337"
    assert f"run: {Path('runs') / 'corn_4l_s1337'}" in out
    assert (run / "checkpoints" / "final.pt").is_file()
    config = (run / "config.yaml").read_text()
    assert "max_iterations: 2" in config and "base_width: 8" in config  # the preset, then the option


def test_pretrain_two_steps_with_a_packaged_preset(venv: Path, workdir: Path) -> None:
    out = _ok(_run([str(venv / "medssl"), "pretrain", "run", "--config", "atrium3d_vnet_guided",
                    "--masking", "random", "--ratio", "0.6", "--set", "data.roi_cache=null", "--epochs", "1",
                    "--set", "optim.warmup_epochs=0", "--name", "pre", "--quiet"], cwd=workdir))
    assert "2 iterations (1 epochs x 2), 8 images" in out
    manifest = json.loads((workdir / "runs" / "pre" / "manifest.json").read_text())
    assert manifest["command"][1:4] == ["pretrain", "run", "--config"]
    assert (workdir / "runs" / "pre" / "checkpoints" / "final.pt").is_file()


def test_quick_demo_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    _ok(_run([str(venv / "medssl"), "demo", "--quick", "--quiet", "--out", "demo"], cwd=tmp_path, timeout=600))
    summary = (tmp_path / "demo" / "SUMMARY.md").read_text()
    assert "Dice (%)" in summary and "exported encoder" in summary
    assert (tmp_path / "demo" / "runs" / "corn_atrium3d" / "checkpoints" / "final.pt").is_file()
