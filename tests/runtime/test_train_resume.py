"""A training process killed with SIGKILL and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from medssl.runtime.checkpoint import load_checkpoint
from medssl.runtime.metrics_log import read_metrics

TOY = Path(__file__).with_name("toy_train.py")


def toy(runs: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(TOY), "--runs-root", str(runs), "--name", name, *extra]


def child_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("MASTER_PORT", None)
    return env


def assert_same_tree(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    flag = tmp_path / "paused"
    log_full, log_cut = open(tmp_path / "full.log", "w"), open(tmp_path / "cut.log", "w")
    # both runs start together: the reference and the one that will be killed after step 35
    full = subprocess.Popen(toy(runs, "full"), env=child_env(), stdout=log_full, stderr=subprocess.STDOUT)
    cut = subprocess.Popen(toy(runs, "cut", "--pause-at", "35", "--pause-file", str(flag)), env=child_env(),
                           stdout=log_cut, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert cut.poll() is None, (tmp_path / "cut.log").read_text()
            assert time.monotonic() < deadline, "the toy run never reached iteration 35"
            time.sleep(0.05)
        cut_ckpts = runs / "cut" / "checkpoints"
        assert sorted(p.name for p in cut_ckpts.glob("iter_*.pt")) == ["iter_00000020.pt", "iter_00000030.pt"]
        os.kill(cut.pid, signal.SIGKILL)
        assert cut.wait(timeout=60) == -signal.SIGKILL
    finally:
        for proc in (full, cut):
            if proc.poll() is None and proc is cut:
                proc.kill()
    # rows beyond the checkpoint were written before the kill and must not survive the resume
    assert max(r["iteration"] for r in read_metrics(runs / "cut" / "metrics.csv")) == 34
    assert not (cut_ckpts / "final.pt").exists()

    assert full.wait(timeout=240) == 0, (tmp_path / "full.log").read_text()
    resumed = subprocess.run(toy(runs, "cut", "--resume"), env=child_env(), capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    log_full.close()
    log_cut.close()

    full_csv = (runs / "full" / "metrics.csv").read_bytes()
    assert (runs / "cut" / "metrics.csv").read_bytes() == full_csv
    rows = read_metrics(runs / "full" / "metrics.csv")
    assert [r["iteration"] for r in rows if r["phase"] == "val"] == [15, 30, 45, 60]
    assert len([r for r in rows if r["phase"] == "train"]) == 30

    for name in ("final.pt", "best.pt"):
        a = load_checkpoint(runs / "full" / "checkpoints" / name)
        b = load_checkpoint(runs / "cut" / "checkpoints" / name)
        for key in ("iteration", "model", "optimizer", "extra", "best", "rng"):
            assert_same_tree(a[key], b[key], f"{name}:{key}")
    final = load_checkpoint(runs / "full" / "checkpoints" / "final.pt")
    assert final["iteration"] == 60 and set(final["extra"]) == {"ema"}
    # the weights really trained (not a trivially equal pair of untouched models)
    first = load_checkpoint(runs / "full" / "checkpoints" / "iter_00000050.pt")
    assert not torch.equal(first["model"]["0.weight"], final["model"]["0.weight"])

    manifest = (runs / "cut" / "manifest.json").read_text()
    assert '"resumes"' in manifest and "--resume" in manifest
