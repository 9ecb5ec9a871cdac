"""Quality benchmark on the real left-atrium MRI volumes at a reduced, CPU-feasible protocol.

Data: the 80 public training volumes beside the repository (``../shared/data/la``, or
``$MEDSSL_SHARED/data/la``) with the standard ``train.list``: its first 64 entries are training (the
first N labeled, the rest unlabeled), its last 16 validation; metrics are computed on those 16
validation volumes (the 20 standard test volumes are held back). Each run starts from the published
preset ``semi/la_<method>`` and reduces it for a CPU: volumes resampled 2× down
(``data.zoom 0.5``), V-Net width 8, 48×48×32 crops, ``--iterations`` iterations (loss ramps and
learning-rate steps at the preset's fractions of training; constant-lr presets run the last 20 % at
lr × 0.1), sliding window 48×48×32 with the published stride halved (9/9/2). The numbers are therefore
**not comparable** to the published ones, which the table shows beside them for orientation only.

Each (method, labeled, seed) writes ``benchmarks/results/semi_la/<method>_l<N>_s<seed>.json``; existing
results are skipped; ``--table-only`` rebuilds ``benchmarks/results/semi_la.{md,json,png}``.

Default grid: ``supervised``, ``mean_teacher``, ``dual_branch``, ``corn`` at 8 labeled, seed 1337:
``.venv/bin/python benchmarks/semi_la.py``. Smoke run: ``--quick`` (writes under ``benchmarks/results/raw/quick/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "semi_la"
FULL_ITERATIONS = 300
FINAL_LR_DECAY = 0.2
DEFAULT_METHODS = ("supervised", "mean_teacher", "dual_branch", "corn")
QUICK_METHODS = ("supervised", "corn")
DEFAULT_LABELED = (8,)
DEFAULT_SEEDS = (1337,)
ZOOM = 0.5
WIDTH = 8
PATCH = (48, 48, 32)
STRIDE = (9, 9, 2)  # the published 18/18/4 at half resolution
EVAL_BATCH = 4

#: Published left-atrium results (Dice % / Jaccard % / 95HD vox / ASD vox; 20 test volumes, full
#: resolution, 112×112×80 crops, 6 000-15 000 iterations): spec/corn.md section 6.
PUBLISHED: dict[str, dict[int, tuple[float, ...]]] = {
    "V-Net sup. only": {4: (43.32, 31.43, 40.91, 12.13), 8: (79.87, 67.60, 26.65, 7.94),
                        16: (85.94, 75.99, 16.70, 4.80), 80: (90.98, 83.61, 8.58, 2.10)},
    "CAML (re-run)": {4: (86.78, 75.97, 10.34, 2.89), 8: (89.33, 80.17, 8.82, 2.08),
                      16: (90.37, 82.56, 5.64, 1.72)},
    "MC-Net+": {4: (83.23, 71.70, 14.92, 3.43), 8: (87.68, 78.27, 10.35, 1.85), 16: (90.60, 82.93, 6.27, 1.58)},
    "CORN": {4: (88.23, 79.12, 9.51, 1.73), 8: (89.70, 81.45, 7.26, 1.62), 16: (91.22, 83.96, 5.34, 1.54)},
}
#: Dice % of the dual-branch baseline in the CORN ablation (no Jaccard / distances published).
PUBLISHED_DUAL_BRANCH_DICE = {4: 74.79, 8: 79.75, 16: 86.50}
#: Which published row corresponds to which medssl method.
PUBLISHED_ROW = {"supervised": "V-Net sup. only", "caml": "CAML (re-run)", "corn": "CORN"}


def la_paths() -> tuple[Path, Path]:
    """(dataset root, train.list) of the real left-atrium data; exits with one line when absent."""
    shared = C.shared_root()
    root, split = shared / "data" / "la", shared / "data" / "la_splits" / "train.list"
    if not root.is_dir() or not split.is_file():
        from medssl.errors import MedsslInputError

        raise MedsslInputError(shared, "left-atrium data not found (expected data/la/<case>/mri_norm2.h5 and "
                               "data/la_splits/train.list; set MEDSSL_SHARED to the folder holding data/)")
    return root, split


def published_cell(method: str, labeled: int) -> str:
    """The published Dice / Jaccard / 95HD / ASD for a method and label count, or a dash."""
    if method == "dual_branch" and labeled in PUBLISHED_DUAL_BRANCH_DICE:
        return f"{PUBLISHED_DUAL_BRANCH_DICE[labeled]:.2f} Dice (ablation)"
    row = PUBLISHED.get(PUBLISHED_ROW.get(method, ""), {})
    if labeled not in row:
        return "—"
    return " / ".join(f"{v:.2f}" for v in row[labeled])


def protocol(iterations: int, final_decay: float, quick: bool, stride: tuple[int, ...], width: int = WIDTH,
             reduced_grid: bool = False) -> dict[str, Any]:
    """What every run of this grid shares, with a one-paragraph description for the table."""
    decay = (f" Constant-lr presets (supervised, dual_branch, caml, corn) run the last {final_decay:.0%} at "
             "lr × 0.1 (not in the published protocol; it steadies the final checkpoint of short runs); Mean "
             "Teacher and UA-MT keep their own scaled step decay." if final_decay > 0 else "")
    desc = (f"**Reduced CPU protocol, not the published one.** Real left-atrium MRI, the first 64 entries of "
            f"`train.list` for training (first N labeled, the rest unlabeled), the last 16 for scoring. Presets "
            f"`semi/la_<method>` with: volumes resampled by {ZOOM} per axis (2× down), V-Net width "
            f"{width}, {'×'.join(map(str, PATCH))} crops, batch 2 labeled + 2 unlabeled (supervised 2), SGD lr "
            f"0.01, **{iterations} iterations** (loss ramps and lr steps at the presets' fractions of training)."
            f"{decay} Final checkpoint on the 16 validation volumes: sliding window "
            f"{'×'.join(map(str, PATCH))}, stride {'/'.join(map(str, stride))} on the reduced grid, no "
            "post-processing; " + (
                "scored at the reduced resolution (labels resampled), 95HD and ASD in voxels of the reduced "
                "grid (one voxel ≈ two original voxels) and in mm." if reduced_grid else
                "probabilities resampled back to each volume's source grid (0.625 mm) and scored there "
                "against the original labels; 95HD and ASD in source voxels and in mm."))
    if quick:
        desc += " QUICK smoke run: the numbers only show that the pipeline works."
    return {"description": desc, "iterations": iterations, "final_lr_decay": final_decay, "zoom": ZOOM,
            "width": width, "patch": list(PATCH), "inference_stride": list(stride), "n_train": 64, "n_scored": 16,
            "scoring_grid": "reduced" if reduced_grid else "source"}


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The options of this protocol beyond the common grid options (passed on to ``--only`` children)."""
    p.add_argument("--width", type=int, default=WIDTH, help=f"V-Net base width (default {WIDTH})")
    p.add_argument("--scoring", choices=("source", "reduced"), default="source",
                   help="score on each volume's source grid (default) or on the reduced training grid")


def protocol_child_args(args: argparse.Namespace) -> list[str]:
    """:func:`add_protocol_args` options as command-line arguments for a ``--only`` child."""
    return ["--width", str(args.width), "--scoring", args.scoring]


#: An arm of a grid on this protocol: (method, extra ``--set`` overrides applied after the protocol's).
Arm = tuple[str, list[str]]


def build_jobs(args: argparse.Namespace, points: list[C.GridPoint], command: str, name: str = NAME,
               arms: dict[str, Arm] | None = None) -> list[C.PointJob]:
    """One :class:`PointJob` per grid point; a point's ``method`` names an arm of ``arms`` (default: the
    method itself with no extra override), so ablation grids run on exactly this protocol."""
    root, split = la_paths()
    stride = PATCH if args.quick else STRIDE  # smoke runs: non-overlapping windows
    reduced = args.scoring == "reduced"
    proto = protocol(args.iterations, args.final_lr_decay, args.quick, stride, args.width, reduced)
    jobs = []
    for p in points:
        method, extra = (arms or {}).get(p.method, (p.method, []))
        preset = C.preset(f"la_{method}")
        reduce = [f"data.spec=la:{root}", f"data.split_file={split}", "data.n_val=16", f"data.zoom={ZOOM}",
                  f"data.patch=[{','.join(map(str, PATCH))}]", f"method_config.network.base_width={args.width}",
                  f"inference.patch=[{','.join(map(str, PATCH))}]",
                  f"inference.stride=[{','.join(map(str, stride))}]",
                  f"runtime.checkpoint_every={max(1, args.iterations // 6)}", "runtime.keep_checkpoints=2",
                  "runtime.log_every=10"]
        cfg = C.load_preset(preset, reduce)
        overrides = [*reduce, *C.scaled_schedule(cfg, args.iterations, args.final_lr_decay), *extra]
        jobs.append(C.PointJob(benchmark=name, point=p, preset=preset, overrides=overrides,
                               results_dir=args.results, runs_root=args.raw / "runs", protocol=proto,
                               eval_cases=None, eval_batch=args.eval_batch, threads=args.threads,
                               command=command, keep_checkpoints=args.keep_checkpoints,
                               reduced_grid=reduced))
    return jobs


def write_table(args: argparse.Namespace, command: str) -> Path:
    """Rebuild ``semi_la.{md,json,png}`` in ``args.out`` from the per-run files in ``args.results``."""
    counts = sorted({n for row in PUBLISHED.values() for n in row})
    body = [[n, *(" / ".join(f"{v:.2f}" for v in PUBLISHED[k][n]) if n in PUBLISHED[k] else "" for k in PUBLISHED)]
            for n in counts]
    appendix = ["## Published numbers (a different protocol)", "",
                "Left-atrium test set (20 volumes), full resolution, 112×112×80 crops, V-Net width 16, 6 000-15 000 "
                "iterations, sliding window 112×112×80 stride 18/18/4; Dice % / Jaccard % / 95HD vox / ASD vox "
                "(CORN, BIBM 2024, arXiv:2410.15916). Shown for orientation: the reduced protocol above uses 2× "
                "downsampled volumes, a half-width network, a few hundred iterations and validation volumes.", "",
                C.markdown_table(["labeled", *PUBLISHED], body), "",
                "Dual-branch baseline in the CORN ablation (Dice %): "
                + ", ".join(f"{v:.2f} at {n}" for n, v in PUBLISHED_DUAL_BRANCH_DICE.items()) + " labeled.", ""]
    results = C.load_results(args.results)
    extra = {"Δ Dice vs supervised (pp, paired seeds)": C.paired_delta_cell(results, "supervised"),
             "Δ Dice vs dual_branch (pp, paired seeds)": C.paired_delta_cell(results, "dual_branch"),
             "published, full protocol (Dice / Jaccard / 95HD / ASD)":
             lambda r: published_cell(r["method"], r["labeled"])}
    published = {k: {str(n): list(v) for n, v in row.items()} for k, row in PUBLISHED.items()}
    return C.write_grid_report(args, command, NAME,
                               "Semi-supervised methods on the real left-atrium data (reduced CPU protocol)",
                               "left atrium, reduced CPU protocol: Dice on 16 validation volumes",
                               extra_columns=extra, appendix=appendix, summary_extra={"published": published})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Semi-supervised methods on the real left-atrium data, reduced "
                                "CPU protocol (accumulating grid).")
    C.add_grid_args(p, iterations=FULL_ITERATIONS, labeled=DEFAULT_LABELED, seeds=DEFAULT_SEEDS,
                    methods=DEFAULT_METHODS, eval_batch=EVAL_BATCH, final_decay=FINAL_LR_DECAY)
    add_protocol_args(p)
    ns = p.parse_args(argv)
    if ns.quick and ns.methods is None:
        ns.methods = list(QUICK_METHODS)
    args = C.finish_grid_args(ns, NAME)
    from medssl.errors import MedsslInputError

    try:
        return C.run_grid(args, NAME, build_jobs, write_table, argv, protocol_child_args(args))
    except MedsslInputError as err:
        print(str(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
