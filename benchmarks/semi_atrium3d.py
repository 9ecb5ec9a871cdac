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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "semi_atrium3d"
N_VOLUMES, DATA_SEED, SHAPE = 24, 0, (64, 64, 48)
DATA_DIR = C.WORK / f"atrium3d_{'x'.join(map(str, SHAPE))}_n{N_VOLUMES}_s{DATA_SEED}"
FULL_ITERATIONS = 150
QUICK_ITERATIONS = 2
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


def protocol(data: Path, iterations: int, quick: bool) -> dict[str, Any]:
    """What every run of this grid shares, with a one-paragraph description for the table."""
    cfg = C.load_preset(C.PRESETS / "atrium3d_corn.yaml")
    n_train, n_test = len(_list(data / "train.list")), len(_list(data / "test.list"))
    width = cfg.method_config.get("network", {}).get("base_width", 16)
    patch, inf = "×".join(map(str, cfg.data.patch)), cfg.inference
    desc = (f"`atrium3d` synthesized at seed {DATA_SEED}: {N_VOLUMES} volumes of {'×'.join(map(str, SHAPE))} "
            f"({n_train} training-list + {n_test} test). Presets `configs/semi/atrium3d_<method>.yaml` (V-Net "
            f"width {width}, {patch} crops, batch {cfg.data.labeled_bs} labeled + {cfg.data.unlabeled_bs} "
            f"unlabeled, supervised {cfg.data.labeled_bs}, SGD lr {cfg.optim.lr}) shortened from "
            f"{cfg.max_iterations} to **{iterations} iterations** (loss ramps and lr steps at the same fractions "
            f"of training); labeled = the first N of the {n_train} training volumes, the rest unlabeled, no "
            f"validation volumes. Final checkpoint scored on the {n_test} test volumes: sliding window "
            f"{'×'.join(map(str, inf.patch))}, stride {'/'.join(map(str, inf.stride))}, softmax averaged, "
            f"no post-processing; 95HD and ASD in voxels.")
    if quick:
        desc += " QUICK smoke run: the numbers only show that the pipeline works."
    return {"description": desc, "dataset": C.rel(data), "n_train": n_train, "n_test": n_test,
            "iterations": iterations, "patch": list(cfg.data.patch), "width": width,
            "inference_patch": list(inf.patch), "inference_stride": list(inf.stride)}


def build_jobs(args: argparse.Namespace, points: list[C.GridPoint], data: Path, command: str) -> list[C.PointJob]:
    proto = protocol(data, args.iterations, args.quick)
    jobs = []
    for p in points:
        preset = C.PRESETS / f"atrium3d_{p.method}.yaml"
        cfg = C.load_preset(preset)
        overrides = [f"data.spec=folder:{data}", "data.n_val=0", *C.scaled_schedule(cfg, args.iterations)]
        jobs.append(C.PointJob(benchmark=NAME, point=p, preset=preset, overrides=overrides,
                               results_dir=args.results, runs_root=args.raw / "runs", protocol=proto,
                               eval_cases=data / "test.list", eval_batch=args.eval_batch, threads=args.threads,
                               command=command, keep_checkpoints=args.keep_checkpoints))
    return jobs


def write_table(results_dir: Path, out_root: Path, command: str, methods: list[str]) -> Path:
    """Rebuild ``<out_root>/semi_atrium3d.{md,json,png}`` from the per-run files in ``results_dir``."""
    results = [r for r in C.load_results(results_dir) if r.get("benchmark") == NAME]
    order = [m for m in C.METHODS if m in methods or any(r["method"] == m for r in results)]
    rows = C.summary_rows(results, order)
    png = C.plot_dice(results, order, out_root / f"{NAME}.png",
                      "atrium3d: Dice on the test volumes (bars: mean over seeds, points: seeds)")
    lines = ["# Semi-supervised methods on `atrium3d` (CPU protocol)", "",
             f"Regenerate: `{command}` (runs only what is missing; `--table-only` rebuilds this table from "
             f"`{C.rel(results_dir)}/*.json`).", ""]
    for text in C.protocols(results):
        lines += [f"Protocol: {text}", ""]
    if not results:
        lines.append("No run has finished yet.")
    else:
        header = ["labeled", "method", "seeds", "Dice %", "Jaccard %", "95HD (vox)", "ASD (vox)",
                  "95HD (mm)", "ASD (mm)", "empty predictions"]
        table = [[r["labeled"], f"**{r['method']}**" if r["method"] == "corn" else r["method"], len(r["seeds"]),
                  r["dice"], r["jaccard"], r["hd95_vox"], r["asd_vox"], r["hd95_mm"], r["asd_mm"],
                  f"{r['empty']} / {r['cases']}"] for r in rows]
        lines += [C.markdown_table(header, table), "",
                  "Mean ± sample standard deviation over seeds of the per-run means over the test volumes. "
                  "An empty prediction scores 0 on all four metrics (the reference evaluation's rule), so "
                  "the distance columns flatter runs with empty predictions; their count is the last "
                  "column (empty / cases scored, all seeds).", ""]
        if png is not None:
            lines += [f"![Dice per method]({png.name})", ""]
    summary = {"benchmark": NAME, "command": command, "protocols": C.protocols(results), "rows": rows,
               "runs": [{k: r[k] for k in ("method", "labeled", "seed", "metrics", "n_empty_predictions",
                                           "train_seconds", "eval_seconds")} for r in results]}
    _, md = C.write_outputs(out_root, NAME, summary, "\n".join(lines))
    C.say(f"wrote {C.rel(md)}" + (f" and {C.rel(png)}" if png else "") + f" ({len(results)} runs)")
    return md


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Six semi-supervised methods on atrium3d (accumulating grid).")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 iterations, 2 labeled, one seed")
    p.add_argument("--methods", nargs="+", choices=list(C.METHODS), default=None, help="default: all six")
    p.add_argument("--labeled", nargs="+", type=int, default=None, help="label counts (default 2 4)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 1337 1338 1339)")
    p.add_argument("--iterations", type=int, default=None, help=f"training iterations (default {FULL_ITERATIONS})")
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel, one torch thread each "
                   "(default 2; quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1)")
    p.add_argument("--eval-batch", type=int, default=EVAL_BATCH, help="sliding windows per forward pass")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table and plot")
    p.add_argument("--redo", action="store_true", help="rerun points whose results exist")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the periodic checkpoints of "
                   "finished runs (default: only final.pt stays)")
    p.add_argument("--results", type=Path, default=None, help="per-run result folder")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = args.methods or (list(C.METHODS))
    args.labeled = args.labeled or list(DEFAULT_LABELED[:1] if args.quick else DEFAULT_LABELED)
    args.seeds = args.seeds or list(DEFAULT_SEEDS[:1] if args.quick else DEFAULT_SEEDS)
    args.iterations = args.iterations or (QUICK_ITERATIONS if args.quick else FULL_ITERATIONS)
    args.jobs = args.jobs or (1 if args.quick else 2)
    root = C.results_root(args.quick)
    args.out_root = root
    args.results = args.results or root / NAME
    args.raw = (C.QUICK if args.quick else C.RAW) / f"{NAME}_runs"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = C.regenerate_command(f"{NAME}.py", [a for a in (sys.argv[1:] if argv is None else argv)
                                                  if a not in ("--table-only", "--redo")])
    if args.only is not None:  # one point, in a subprocess started by run_jobs
        job = build_jobs(args, [C.GridPoint.parse(args.only)], ensure_data(), command)[0]
        C.run_point(job, redo=args.redo)
        return 0
    C.say(f"regenerate with: {command}")
    t0 = time.perf_counter()
    failed: list[str] = []
    if not args.table_only:
        data = ensure_data()
        points = C.grid(args.methods, args.labeled, args.seeds)
        jobs = build_jobs(args, points, data, command)
        child_args = ["--iterations", str(args.iterations), "--eval-batch", str(args.eval_batch),
                      "--results", str(args.results)] + (["--quick"] if args.quick else [])
        if args.threads is not None:
            child_args += ["--threads", str(args.threads)]
        if args.keep_checkpoints:
            child_args.append("--keep-checkpoints")
        try:
            failed = C.run_jobs(jobs, f"{NAME}.py", child_args, args.jobs, args.redo, args.raw / "logs")
        except C.ProtocolMismatch as err:
            print(f"{NAME}: {err}", file=sys.stderr)
            return 2
    write_table(args.results, args.out_root, command, args.methods)
    C.say(f"done in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    C.say(f"regenerate with: {command}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
