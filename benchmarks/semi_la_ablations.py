"""Why does (or doesn't) a semi-supervised method beat supervised training on the real left atrium?
Ablations of CORN and the dual-branch baseline on exactly the :mod:`semi_la` protocol.

Arms (each a method plus ``--set`` overrides applied after the protocol's own):

* ``supervised``, ``dual_branch``, ``corn``: the methods as in the main grid (the same protocol hash, so a
  point of the main grid can be copied here instead of rerun);
* ``dual_branch_nocons``: the dual-branch network with the consistency weight 0 — two independently
  trained V-Nets with the reference code's Dice-only supervised loss: separates "what the
  consistency does" from "what the Dice-only loss does" (supervised uses 0.5 (CE + Dice));
* ``caml``: CORN with the CAML cosine correlation instead of the CCM (the paper's "no CCM" ablation);
* ``corn_no_dfp``: CORN whose anchors come from this iteration's labeled volumes only (no feature memory
  across iterations: the paper's "no DFP" ablation);
* ``corn_lambda0.01`` / ``corn_lambda0.2``: the CCM weight λ_d at 0.01 and 0.2 (published 0.05);
* ``corn_cons0.1``: the cross-branch consistency weight λ_c at 0.1 (published 1.0);
* ``corn_ramp_absolute``: the published ramp in absolute iterations (unit 150, length 40: full weight at
  iteration 6 000) instead of the ramp scaled to the run's length.

Results accumulate per point in ``benchmarks/results/semi_la_ablations/<arm>_l<N>_s<seed>.json`` (each with
its training curve: losses, ramp weights, branch agreement, anchor classes); ``--table-only`` rebuilds
``benchmarks/results/semi_la_ablations.{md,json,png}``. Use the main grid's ``--iterations`` / ``--width``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import semi_la  # noqa: E402

NAME = "semi_la_ablations"
ARMS: dict[str, semi_la.Arm] = {
    "supervised": ("supervised", []),
    "dual_branch": ("dual_branch", []),
    "dual_branch_nocons": ("dual_branch", ["method_config.cons_weight=0.0"]),
    "corn": ("corn", []),
    "caml": ("caml", []),
    "corn_no_dfp": ("corn", ["method_config.anchor_source=batch"]),
    "corn_lambda0.01": ("corn", ["method_config.coral_weight=0.01"]),
    "corn_lambda0.2": ("corn", ["method_config.coral_weight=0.2"]),
    "corn_cons0.1": ("corn", ["method_config.cons_weight=0.1"]),
    "corn_ramp_absolute": ("corn", ["method_config.ramp_unit=150", "method_config.rampup_length=40"]),
}
DEFAULT_ARMS = ("supervised", "dual_branch", "dual_branch_nocons", "corn", "caml", "corn_no_dfp")


def build_jobs(args: argparse.Namespace, points: list[C.GridPoint], command: str) -> list[C.PointJob]:
    return semi_la.build_jobs(args, points, command, name=NAME, arms=ARMS)


def write_table(args: argparse.Namespace, command: str) -> Path:
    results = C.load_results(args.results)
    extra = {"Δ Dice vs supervised (pp, paired seeds)": C.paired_delta_cell(results, "supervised"),
             "Δ Dice vs dual_branch (pp, paired seeds)": C.paired_delta_cell(results, "dual_branch"),
             "final agreement (unlabeled)": _final_log_cell(results, "agree_frac"),
             "final L_s": _final_log_cell(results, "loss_sup")}
    appendix = ["Arms: " + "; ".join(f"`{a}` = {m} {' '.join(o) or '(preset)'}" for a, (m, o) in ARMS.items()), ""]
    return C.write_grid_report(args, command, NAME, "Ablations on the real left atrium (semi_la protocol)",
                               "left atrium ablations: Dice on 16 validation volumes", extra_columns=extra,
                               appendix=appendix, order=list(ARMS))


def _final_log_cell(results: list[dict[str, Any]], key: str) -> Callable[[dict[str, Any]], str]:
    """Mean ± std over seeds of the last stored training-curve value of ``key``."""
    def cell(row: dict[str, Any]) -> str:
        vals = [r["curve"][key][-1] for r in results if r["method"] == row["method"]
                and r["labeled"] == row["labeled"] and r.get("curve", {}).get(key)]
        return C.mean_std(vals, digits=3) if vals else "—"
    return cell


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ablations of CORN / dual-branch on the real left atrium "
                                "(accumulating grid on the semi_la protocol).")
    C.add_grid_args(p, iterations=semi_la.FULL_ITERATIONS, labeled=semi_la.DEFAULT_LABELED,
                    seeds=semi_la.DEFAULT_SEEDS, methods=DEFAULT_ARMS, eval_batch=semi_la.EVAL_BATCH,
                    final_decay=semi_la.FINAL_LR_DECAY, choices=list(ARMS))
    semi_la.add_protocol_args(p)
    args = C.finish_grid_args(p.parse_args(argv), NAME)
    from medssl.errors import MedsslInputError

    try:
        return C.run_grid(args, NAME, build_jobs, write_table, argv, semi_la.protocol_child_args(args))
    except MedsslInputError as err:
        print(str(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
