"""Run every medssl benchmark in sequence (``make bench``).

CPU benchmarks, always: ``speed_semi.py`` (training-step and sliding-window speed ratios),
``speed_pretrain.py`` (masked pretraining speed ratios), ``localize_speed.py`` (localization backends and
the ROI-cache speed-up), ``semi_atrium3d.py`` (six methods on the embedded data), ``semi_atrium3d_init.py``
(CORN from scratch vs from 3D pretraining; after semi_atrium3d, whose CORN runs it reuses), ``semi_la.py``
(real left-atrium data at a reduced protocol; skipped with a note when the data is absent),
``mim_brain2d.py`` / ``mim_chest2d.py`` (2D transfer of random vs text-guided masked pretraining). With a CUDA device and without
``--quick`` also ``speed_semi.py --size la`` and ``gpu_check.sh`` (the published size).

``--quick`` passes ``--quick`` to each (smoke runs, outputs under ``benchmarks/results/raw/quick/``).
Each benchmark runs as its own process; a failing one is reported and the others still run.

Regenerate everything: ``.venv/bin/python benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

CPU_BENCHMARKS = ("speed_semi", "speed_pretrain", "localize_speed", "semi_atrium3d", "semi_atrium3d_init",
                  "semi_la", "mim_brain2d", "mim_chest2d")


def plan(args: argparse.Namespace, cuda: bool) -> list[tuple[str, list[str]]]:
    """(name, command) of every benchmark to run, in order."""
    common = ["--quick"] if args.quick else []
    threads = ["--threads", str(args.threads)] if args.threads is not None else []
    jobs = ["--jobs", str(args.jobs)] if args.jobs is not None else []
    steps: list[tuple[str, list[str]]] = []
    for name in CPU_BENCHMARKS:
        if name in args.skip:
            continue
        extra = jobs if name.startswith(("semi_", "mim_")) else []
        steps.append((name, [sys.executable, str(C.BENCH / f"{name}.py"), *common, *threads, *extra]))
    if cuda and not args.quick and "gpu" not in args.skip:
        steps.append(("speed_semi --size la", [sys.executable, str(C.BENCH / "speed_semi.py"), "--size", "la"]))
        steps.append(("gpu_check", ["bash", str(C.BENCH / "gpu_check.sh")]))
    return steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every medssl benchmark in sequence.")
    p.add_argument("--quick", action="store_true", help="smoke runs of every benchmark")
    p.add_argument("--skip", nargs="+", default=[], choices=[*CPU_BENCHMARKS, "gpu"], help="benchmarks to leave out")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs of the semi-supervised grids")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default 1)")
    args = p.parse_args(argv)
    import torch

    command = C.regenerate_command("run_all.py", argv)
    C.say(f"regenerate with: {command}")
    if "semi_la" not in args.skip:
        shared = C.shared_root()
        if not (shared / "data" / "la").is_dir():
            C.say(f"semi_la skipped: no left-atrium data under {shared}/data/la (set MEDSSL_SHARED)")
            args.skip.append("semi_la")
    outcome: list[tuple[str, int, float]] = []
    for name, cmd in plan(args, torch.cuda.is_available()):
        C.say(f"=== {name}: {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}")
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=C.REPO, check=False).returncode
        outcome.append((name, rc, time.perf_counter() - t0))
    C.say("summary:")
    for name, rc, sec in outcome:
        C.say(f"  {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {sec:.0f} s")
    C.say(f"regenerate with: {command}")
    return 0 if all(rc == 0 for _, rc, _ in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
