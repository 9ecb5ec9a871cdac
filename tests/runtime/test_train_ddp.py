"""Two CPU processes (Fabric DDP over gloo) train the toy model and end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from medssl.runtime.checkpoint import load_checkpoint
from medssl.runtime.metrics_log import read_metrics

TOY = Path(__file__).with_name("toy_train.py")


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for var in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(var, None)
    cmd = [sys.executable, str(TOY), "--runs-root", str(runs), "--name", "ddp", "--devices", "2",
           "--strategy", "ddp", "--iterations", "12", "--checkpoint-every", "6", "--log-every", "3",
           "--val-every", "6", "--dump-weights"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    run = runs / "ddp"
    rank0 = load_checkpoint(run / "predictions" / "rank0.pt")["model"]
    rank1 = load_checkpoint(run / "predictions" / "rank1.pt")["model"]
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    final = load_checkpoint(run / "checkpoints" / "final.pt")
    assert final["world_size"] == 2 and len(final["rng"]) == 2  # every rank's RNG state is kept
    for key in rank0:
        assert torch.equal(final["model"][key], rank0[key]), key
    start = load_checkpoint(run / "checkpoints" / "iter_00000006.pt")
    assert not torch.equal(start["model"]["0.weight"], final["model"]["0.weight"])

    rows = read_metrics(run / "metrics.csv")  # written once, by rank 0
    assert [(r["iteration"], r["phase"]) for r in rows] == [
        (3, "train"), (6, "train"), (6, "val"), (9, "train"), (12, "train"), (12, "val")]
    manifest = (run / "manifest.json").read_text()
    assert "2 processes" in manifest and "gloo" in manifest
