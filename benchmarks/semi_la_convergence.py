"""Convergence study on the real left-atrium data: supervised training at 8 labeled volumes, V-Net width
8 and 16, for 300 / 1 000 / 3 000 / 6 000 iterations, scored on the source grid.

Each point is one :mod:`semi_la` run (the same reduced CPU protocol: volumes 2× down, 48×48×32 crops,
SGD 0.01 with the last 20 % at lr × 0.1, final checkpoint on the 16 validation volumes, probabilities
resampled back to the 0.625 mm source grid), so a chosen protocol carries over to the method grid
unchanged. Results accumulate per point in ``benchmarks/results/semi_la_convergence/w<width>_it<N>/``;
``--table-only`` rebuilds ``benchmarks/results/semi_la_convergence.{md,json,png}``.

The table answers one question: from how many iterations on does supervised training stop improving
(Dice within about one point of the longest run)? That length is the protocol of the method grid.

Run everything that is missing, one point at a time on one thread:
``.venv/bin/python benchmarks/semi_la_convergence.py``; the two widths in parallel:
``... --widths 8 & ... --widths 16``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import semi_la  # noqa: E402

NAME = "semi_la_convergence"
WIDTHS = (8, 16)
ITERATIONS = (300, 1000, 3000, 6000)
SEEDS = (1337,)
LABELED = 8
#: A length has converged when its mean Dice is within this many points of the longest run's.
TOLERANCE_DICE_POINTS = 1.0


def point_dir(results: Path, width: int, iterations: int) -> Path:
    """Result folder of one (width, iterations) point."""
    return results / f"w{width}_it{iterations}"


def run_point(args: argparse.Namespace, width: int, iterations: int) -> int:
    """Train and score the missing seeds of one (width, iterations) point through :mod:`semi_la`."""
    argv = ["--methods", "supervised", "--labeled", str(LABELED), "--seeds", *map(str, args.seeds),
            "--iterations", str(iterations), "--width", str(width), "--jobs", str(args.jobs),
            "--results", C.rel(point_dir(args.results, width, iterations)),
            "--out", C.rel(C.RAW / f"{NAME}_tables" / f"w{width}_it{iterations}")]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return semi_la.main(argv)


def collect(results: Path) -> list[dict[str, Any]]:
    """One row per (width, iterations) with results: metric means ± std over seeds and costs."""
    rows = []
    for folder in sorted(results.glob("w*_it*")):
        runs = C.load_results(folder)
        if not runs:
            continue
        width, iterations = (int(x) for x in folder.name[1:].split("_it"))
        col = lambda k, runs=runs: [r["metrics"][k] for r in runs]  # noqa: E731
        dice = C.finite(col("dice"))
        rows.append({
            "width": width, "iterations": iterations, "seeds": sorted(r["seed"] for r in runs),
            "dice_mean": 100 * statistics.fmean(dice) if dice else None,
            "dice": C.mean_std(col("dice"), 100), "jaccard": C.mean_std(col("jaccard"), 100),
            "hd95_vox": C.mean_std(col("hd95_vox")), "asd_vox": C.mean_std(col("asd_vox")),
            "hd95_mm": C.mean_std(col("hd95_mm")), "asd_mm": C.mean_std(col("asd_mm")),
            "empty": sum(r["n_empty_predictions"] for r in runs), "scored": sum(r["n_cases"] for r in runs),
            "seconds_per_iteration": statistics.fmean(
                r["train_seconds"] / max(1, r["iterations_trained_this_session"]) for r in runs
                if r["iterations_trained_this_session"]) if any(r["iterations_trained_this_session"] for r in runs)
            else None,
            "eval_seconds": statistics.fmean(r["eval_seconds"] for r in runs),
            "threads": runs[0]["environment"].get("threads"),
            "protocol": runs[0]["protocol"]["description"],
        })
    return sorted(rows, key=lambda r: (r["width"], r["iterations"]))


def converged_lengths(rows: list[dict[str, Any]]) -> dict[int, int | None]:
    """Per width: the shortest length whose mean Dice is within the tolerance of the longest run's."""
    out: dict[int, int | None] = {}
    for width in sorted({r["width"] for r in rows}):
        mine = [r for r in rows if r["width"] == width and r["dice_mean"] is not None]
        if len(mine) < 2:
            out[width] = None
            continue
        longest = max(mine, key=lambda r: r["iterations"])
        ok = [r["iterations"] for r in mine if longest["dice_mean"] - r["dice_mean"] <= TOLERANCE_DICE_POINTS]
        out[width] = min(ok)
    return out


def verdict_line(width: int, converged_from: int | None, rows: list[dict[str, Any]]) -> str:
    """One line per width: the rule's answer, and why it is not yet decisive when it is not."""
    if converged_from is None:
        return f"- width {width}: fewer than two lengths measured."
    longest = max(rows, key=lambda r: r["iterations"])
    text = (f"- width {width}: within {TOLERANCE_DICE_POINTS:g} Dice point of the longest measured run "
            f"({longest['iterations']} iterations, {len(longest['seeds'])} seed(s)) from {converged_from} iterations")
    spreads = [float(r["dice"].split("±")[1]) for r in rows if "±" in str(r["dice"])]
    caveats = []
    if len(longest["seeds"]) < 2:
        caveats.append("the longest run has a single seed")
    if spreads and max(spreads) > TOLERANCE_DICE_POINTS:
        caveats.append(f"the seed spread (std up to {max(spreads):.1f} points) exceeds the tolerance")
    return text + (f" — provisional: {'; '.join(caveats)}." if caveats else ".")


def _generic(description: str) -> str:
    """A point's protocol text with its width and iteration count replaced by W and N."""
    import re

    description = re.sub(r"V-Net width \d+", "V-Net width W", description)
    return re.sub(r"\*\*\d+ iterations\*\*", "**N iterations**", description)


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Dice against iterations (log axis), one line per width."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for width in sorted({r["width"] for r in rows}):
        mine = [r for r in rows if r["width"] == width and r["dice_mean"] is not None]
        ax.plot([r["iterations"] for r in mine], [r["dice_mean"] for r in mine], "o-", label=f"width {width}")
    ax.set_xscale("log")
    ax.set_xlabel("training iterations")
    ax.set_ylabel("Dice % (16 validation volumes)")
    ax.set_title("Supervised, 8 labeled, real left atrium (source-grid scoring)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_table(args: argparse.Namespace, command: str) -> Path:
    """Rebuild ``semi_la_convergence.{md,json,png}`` from the per-point result folders."""
    rows = collect(args.results)
    chosen = converged_lengths(rows)
    body = [[r["width"], r["iterations"], len(r["seeds"]), r["dice"], r["jaccard"], r["hd95_vox"], r["asd_vox"],
             r["hd95_mm"], r["asd_mm"], f"{r['empty']} / {r['scored']}",
             "—" if r["seconds_per_iteration"] is None else f"{r['seconds_per_iteration']:.2f}",
             f"{r['eval_seconds']:.0f}"] for r in rows]
    header = ["width", "iterations", "seeds", "Dice %", "Jaccard %", "95HD (vox)", "ASD (vox)", "95HD (mm)",
              "ASD (mm)", "empty predictions", "s / iteration", "eval s"]
    verdict = [verdict_line(w, n, [r for r in rows if r["width"] == w]) for w, n in chosen.items()]
    md = "\n".join([
        "# Convergence of supervised training on the real left atrium (8 labeled)", "",
        f"Regenerate: `{command}` (runs only what is missing; `--table-only` rebuilds this table).", "",
        "Protocol of every point (width W and N iterations per row): " + (_generic(rows[0]["protocol"]) if rows
                                                                            else "(no results yet)"), "",
        "Seconds per iteration: training wall time / iterations on one torch thread, on a 2-core machine "
        "shared with other work (an upper bound on the quiet cost).", "",
        C.markdown_table(header, body), "",
        "Mean ± sample standard deviation over seeds of the per-run means over the 16 validation volumes.", "",
        "![Dice against iterations](semi_la_convergence.png)", "",
        "## Convergence", "", *verdict, "",
    ])
    png = plot(rows, args.out / f"{NAME}.png")
    data = {"name": NAME, "command": command, "rows": rows, "converged_from": chosen,
            "tolerance_dice_points": TOLERANCE_DICE_POINTS, "plot": C.rel(png) if png else None}
    md_path, _ = C.write_outputs(args.out, NAME, data, md)
    return md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Convergence of supervised training on the real left atrium.")
    p.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    p.add_argument("--iterations", nargs="+", type=int, default=list(ITERATIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--jobs", type=int, default=1, help="seeds of one point in parallel (one thread each)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1)")
    C.add_table_args(p, NAME)
    args = p.parse_args(argv)
    command = C.table_command(NAME, argv)
    failed = 0
    if not args.table_only:
        for width in args.widths:
            for iterations in args.iterations:
                failed += run_point(args, width, iterations) != 0
    write_table(args, command)
    C.say(f"regenerate with: {command}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
