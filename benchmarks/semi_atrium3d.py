"""Quality benchmark: the six semi-supervised methods on the embedded ``atrium3d`` data.

Data: ``synthesize("atrium3d", benchmarks/work/atrium3d_64x64x48_n24_s0, n=24, seed=0,
shape=(64, 64, 48))`` (generated once; byte-identical on every machine): 19 training-list volumes and
5 test volumes. Each (method, labeled, seed) trains from ``configs/semi/atrium3d_<method>.yaml`` with
``data.labeled`` = the first N training volumes (the other training volumes unlabeled, no validation
volumes), shortened to ``--iterations`` with its loss ramps and learning-rate steps scaled to the same
fractions of training, and its final checkpoint is scored on the 5 test volumes
(``evaluate_run(run, cases=test.list)``). Each run writes ``benchmarks/results/semi_atrium3d/<method>_l<N>_s<seed>.json``;
existing results are skipped, so the grid accumulates across sessions and can be interrupted (a killed
run resumes from its last checkpoint). ``--table-only`` rebuilds ``benchmarks/results/semi_atrium3d.{md,json,png}``
from whatever has finished.

Full grid: ``.venv/bin/python benchmarks/semi_atrium3d.py`` (36 runs, two at a time on two cores).
Smoke run: ``--quick`` (writes under ``benchmarks/results/raw/quick/``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "semi_atrium3d"
N_VOLUMES, DATA_SEED, SHAPE = 24, 0, (64, 64, 48)
DATA_DIR = C.WORK / f"atrium3d_{'x'.join(map(str, SHAPE))}_n{N_VOLUMES}_s{DATA_SEED}"
FULL_ITERATIONS = 150
FINAL_LR_DECAY = 0.2
DEFAULT_LABELED = (2, 4)
DEFAULT_SEEDS = (1337, 1338, 1339)
EVAL_BATCH = 4


def ensure_data(root: Path = DATA_DIR) -> Path:
    """Synthesize the benchmark data into ``root`` once (into a temporary folder, then renamed, so that
    a concurrent or interrupted call never leaves a half-written dataset)."""
    from medssl.data.synthetic import synthesize

    if (root / "test.list").is_file():
        return root
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    C.say(f"synthesizing atrium3d: {N_VOLUMES} volumes of {SHAPE}, seed {DATA_SEED} -> {C.rel(root)}")
    synthesize("atrium3d", tmp, n=N_VOLUMES, seed=DATA_SEED, shape=SHAPE)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "test.list").is_file():
            raise
    return root


def _list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def protocol(data: Path, iterations: int, final_decay: float, quick: bool) -> dict[str, Any]:
    """What every run of this grid shares, with a one-paragraph description for the table."""
    cfg = C.load_preset(C.PRESETS / "atrium3d_corn.yaml")
    n_train, n_test = len(_list(data / "train.list")), len(_list(data / "test.list"))
    width = cfg.method_config.network.base_width
    patch, inf = "×".join(map(str, cfg.data.patch)), cfg.inference
    decay = (f" Constant-lr presets (supervised, dual_branch, caml, corn) run the last {final_decay:.0%} at lr × 0.1 "
             "(not in the published protocol: in runs this short the BatchNorm running statistics trail the "
             "weights and the final checkpoint's quality swings from iteration to iteration); Mean Teacher and "
             "UA-MT keep their own scaled step decay." if final_decay > 0 else "")
    desc = (f"`atrium3d` synthesized at seed {DATA_SEED}: {N_VOLUMES} volumes of {'×'.join(map(str, SHAPE))} "
            f"({n_train} training-list + {n_test} test). Presets `configs/semi/atrium3d_<method>.yaml` (V-Net "
            f"width {width}, {patch} crops, batch {cfg.data.labeled_bs} labeled + {cfg.data.unlabeled_bs} "
            f"unlabeled, supervised {cfg.data.labeled_bs}, SGD lr {cfg.optim.lr}) shortened from "
            f"{cfg.max_iterations} to **{iterations} iterations** (loss ramps and lr steps at the same fractions "
            f"of training).{decay} Labeled = the first N of the {n_train} training volumes, the rest unlabeled, "
            f"no validation volumes. Final checkpoint scored on the {n_test} test volumes: sliding window "
            f"{'×'.join(map(str, inf.patch))}, stride {'/'.join(map(str, inf.stride))}, softmax averaged, "
            f"no post-processing; 95HD and ASD in voxels (mm also given).")
    if quick:
        desc += " QUICK smoke run: the numbers only show that the pipeline works."
    return {"description": desc, "dataset": C.rel(data), "n_train": n_train, "n_test": n_test,
            "iterations": iterations, "final_lr_decay": final_decay, "patch": list(cfg.data.patch),
            "width": width, "inference_patch": list(inf.patch), "inference_stride": list(inf.stride)}


def build_jobs(args: argparse.Namespace, points: list[C.GridPoint], command: str) -> list[C.PointJob]:
    """One :class:`PointJob` per grid point (synthesizes the data on first use)."""
    data = ensure_data()
    proto = protocol(data, args.iterations, args.final_lr_decay, args.quick)
    jobs = []
    for p in points:
        preset = C.PRESETS / f"atrium3d_{p.method}.yaml"
        overrides = [f"data.spec=folder:{data}", "data.n_val=0",
                     *C.scaled_schedule(C.load_preset(preset), args.iterations, args.final_lr_decay)]
        jobs.append(C.PointJob(benchmark=NAME, point=p, preset=preset, overrides=overrides,
                               results_dir=args.results, runs_root=args.raw / "runs", protocol=proto,
                               eval_cases=data / "test.list", eval_batch=args.eval_batch, threads=args.threads,
                               command=command, keep_checkpoints=args.keep_checkpoints))
    return jobs


def write_table(args: argparse.Namespace, command: str) -> Path:
    """Rebuild ``semi_atrium3d.{md,json,png}`` in ``args.out`` from the per-run files in ``args.results``."""
    return C.write_grid_report(args, command, NAME, "Semi-supervised methods on `atrium3d` (CPU protocol)",
                               "atrium3d: Dice on the test volumes (bars: mean over seeds, points: seeds)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Six semi-supervised methods on atrium3d (accumulating grid).")
    C.add_grid_args(p, iterations=FULL_ITERATIONS, labeled=DEFAULT_LABELED, seeds=DEFAULT_SEEDS,
                    methods=C.METHODS, eval_batch=EVAL_BATCH, final_decay=FINAL_LR_DECAY)
    args = C.finish_grid_args(p.parse_args(argv), NAME)
    return C.run_grid(args, NAME, build_jobs, write_table, argv)


if __name__ == "__main__":
    sys.exit(main())
