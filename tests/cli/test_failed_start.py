"""A command that stops at bad input leaves nothing behind, and the identical command works once it is fixed.

Each command group runs as a real subprocess (``python -m medssl.cli``): the broken input must give exit
code 2 and one stderr line naming the file, no run directory / cache folder / export may remain, and the
same argument list must succeed after the file is restored (no ``--overwrite``). Where a command can fail
after its run directory was prepared (semi: voxel values read with the first batch; classify: a batch size
checked against the processes; detect: images decoded while training), the broken input is chosen to fail
there, so these tests fail when a failed start is not cleaned up; pretraining, export and localization
check everything before they write, and their tests hold that contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _medssl(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "medssl.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _fails_naming(done: subprocess.CompletedProcess[str], file: Path, problem: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("medssl: error: "), done.stderr
    assert str(file) in lines[0] and problem in lines[0], lines[0]


def _succeeds(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


def _with_nan(path: Path) -> Callable[[], None]:
    """Put one NaN voxel into the NIfTI ``path``; returns the function that restores the file."""
    original = path.read_bytes()
    img = nib.load(path)
    array = np.asarray(img.dataobj, dtype=np.float32)
    array[(1,) * array.ndim] = np.nan
    nib.save(nib.Nifti1Image(array, img.affine), path)
    return lambda: path.write_bytes(original)


def _truncated(path: Path) -> Callable[[], None]:
    """Cut the file ``path`` in half; returns the function that restores it."""
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    return lambda: path.write_bytes(original)


def _no_tmp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name], "a partial file was left"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from medssl.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("pristine")
    return {"atrium3d": synthesize("atrium3d", root / "atrium3d", n=6, seed=3, shape=(40, 40, 24), quiet=True),
            "brain2d": synthesize("brain2d", root / "brain2d", n=8, seed=1, shape=(64, 64), quiet=True)}


@pytest.fixture()
def work(pristine: dict[str, Path], tmp_path: Path) -> Path:
    """A writable copy of the synthetic datasets; commands run in this folder (runs/ below it)."""
    for name, folder in pristine.items():
        shutil.copytree(folder, tmp_path / name)
    return tmp_path


def _first_training_image(root: Path, suffix: str) -> Path:
    return root / "images" / f"{(root / 'train.list').read_text().split()[0]}{suffix}"


SEMI = ["semi", "train", "--method", "corn", "--data", "folder:atrium3d", "--labeled", "2", "--name", "s",
        "--iterations", "2", "--quiet", "--accelerator", "cpu", "--threads", "1",
        "--set", "method_config.network.base_width=4", "--set", "data.n_val=1", "--set", "data.patch=[32,32,16]",
        "--set", "data.labeled_bs=1", "--set", "data.unlabeled_bs=1", "--set", "inference.patch=[32,32,16]",
        "--set", "evaluate_after=false"]
PRETRAIN = ["pretrain", "run", "--data", "atrium3d", "--dims", "3", "--backbone", "vnet", "--masking", "random",
            "--ratio", "0.6", "--name", "p", "--epochs", "1", "--batch-size", "2", "--quiet", "--accelerator", "cpu",
            "--threads", "1", "--set", "model.vnet_width=4", "--set", "model.decoder_width=16",
            "--set", "data.crop_size=[32,32,16]", "--set", "optim.warmup_epochs=0", "--set", "preview_images=0"]


def _nan_voxel_then_fixed(work: Path, args: list[str], run: str) -> None:
    """A NaN voxel in the first training volume: exit 2, no runs/; restored: the same command trains."""
    image = _first_training_image(work / "atrium3d", ".nii.gz")
    restore = _with_nan(image)
    _fails_naming(_medssl(args, work), Path("atrium3d/images") / image.name, "NaN")
    assert not (work / "runs").exists()
    restore()
    _succeeds(_medssl(args, work))
    assert (work / "runs" / run / "checkpoints" / "final.pt").is_file()


def test_semi_train(work: Path) -> None:
    _nan_voxel_then_fixed(work, SEMI, "s")  # found when the first batch is read: after the run was prepared


def test_semi_resume_failing_keeps_the_run(work: Path) -> None:
    _succeeds(_medssl(SEMI, work))
    before = sorted(p.relative_to(work) for p in (work / "runs" / "s").rglob("*"))
    _with_nan(_first_training_image(work / "atrium3d", ".nii.gz"))
    resume = ["semi", "train", "--name", "s", "--resume", "--iterations", "4", "--quiet"]
    assert _medssl(resume, work).returncode == 2
    assert (work / "runs" / "s" / "checkpoints" / "final.pt").is_file()
    assert set(before) <= {p.relative_to(work) for p in (work / "runs" / "s").rglob("*")}


def test_pretrain_run(work: Path) -> None:
    _nan_voxel_then_fixed(work, PRETRAIN, "p")  # pretraining reads every image before the run is prepared


def test_pretrain_export(work: Path) -> None:
    _succeeds(_medssl(PRETRAIN, work))
    final = work / "runs" / "p" / "checkpoints" / "final.pt"
    export = ["pretrain", "export", "runs/p", "--format", "vnet", "--out", "encoders/vnet.pt"]
    restore = _truncated(final)
    _fails_naming(_medssl(export, work), Path("runs/p/checkpoints/final.pt"), "")
    assert not (work / "encoders").exists()
    restore()
    _succeeds(_medssl(export, work))
    assert sorted(p.name for p in (work / "encoders").iterdir()) == ["vnet.pt", "vnet.pt.json"]


def test_finetune_classify(work: Path) -> None:
    args = ["finetune", "classify", "--data", "csv:brain2d/classes.csv", "--backbone", "resnet18", "--epochs", "1",
            "--name", "c", "--config", "c.yaml", "--quiet", "--accelerator", "cpu", "--threads", "1",
            "--set", "model.image_size=32", "--set", "data.val_fraction=0.25", "--set", "data.eval_batch_size=4"]
    # a bad configuration found once the run has started: mixup / cutmix need an even batch per process
    (work / "c.yaml").write_text("data:\n  batch_size: 3\n")
    _fails_naming(_medssl(args, work), Path("data.batch_size"), "even batch")
    assert not (work / "runs").exists()
    # bad data: an image cut short
    (work / "c.yaml").write_text("data:\n  batch_size: 2\n")
    image = _first_training_image(work / "brain2d", ".png")
    restore = _truncated(image)
    _fails_naming(_medssl(args, work), image.relative_to(work), "")
    assert not (work / "runs").exists()
    restore()
    _succeeds(_medssl(args, work))
    assert (work / "runs" / "c" / "checkpoints" / "final.pt").is_file()


def test_finetune_detect(work: Path) -> None:
    args = ["finetune", "detect", "--data", "brain2d", "--backbone", "resnet18", "--name", "d", "--iterations", "2",
            "--quiet", "--accelerator", "cpu", "--threads", "1", "--set", "data.batch_size=2",
            "--set", "optim.warmup_iterations=1", "--set", "validate_every=0", "--set", "figures=0",
            "--set", "model.min_size=64", "--set", "model.max_size=64", "--set", "model.fpn_channels=32",
            "--set", "model.box_head_dim=64", "--set", "model.rpn_proposals_train=64",
            "--set", "model.rpn_proposals_test=32", "--set", "model.roi_batch_size=32",
            "--set", "model.trainable_layers=1", "--set", "model.image_mean=[0.3,0.3,0.3]",
            "--set", "model.image_std=[0.2,0.2,0.2]"]
    # every training image but the first (with the normalisation given, only the first one is decoded
    # before the run starts): the first batch meets one of them
    later = (work / "brain2d" / "train.list").read_text().split()[1:]
    restores = [_truncated(work / "brain2d" / "images" / f"{case}.png") for case in later]
    done = _medssl(args, work)
    named = [case for case in later if f"brain2d/images/{case}.png" in done.stderr]
    assert len(named) == 1, done.stderr
    _fails_naming(done, Path(f"brain2d/images/{named[0]}.png"), "")
    assert not (work / "runs").exists()
    for restore in restores:
        restore()
    _succeeds(_medssl(args, work))
    assert (work / "runs" / "d" / "checkpoints" / "final.pt").is_file()


def test_localize_run(work: Path) -> None:
    args = ["localize", "run", "--data", "atrium3d", "--prompt", "A cardiac MRI highlighting the left atrium",
            "--cache", "roi", "--strict", "--quiet"]
    image = sorted((work / "atrium3d" / "images").iterdir())[0]
    restore = _truncated(image)
    _fails_naming(_medssl(args, work), image.relative_to(work), "truncated or corrupt")
    assert not (work / "roi").exists()
    restore()
    _succeeds(_medssl(args, work))
    entries = sorted((work / "roi").rglob("*.json"))
    assert len([p for p in entries if p.parent.name != "runs" and p.name != "manifest.json"]) == 6
    _no_tmp_files(work / "roi")
