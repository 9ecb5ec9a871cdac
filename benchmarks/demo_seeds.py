"""The demo's headline number over training seeds: ``medssl demo --seed S`` for several seeds.

The demo quotes CORN's Dice on the held-out ``atrium3d`` volumes from one training seed; this benchmark
runs the whole demo (same embedded data, training seed of the pretraining and of CORN varied) and
reports the spread, which ``medssl.demo.MEASURED_SEED_SPREAD`` and the README quote (a test checks that
they agree with ``benchmarks/results/demo_seeds.json``).

Each seed writes ``benchmarks/results/demo_seeds/s<seed>.json``; existing seeds are skipped;
``--table-only`` rebuilds ``benchmarks/results/demo_seeds.{md,json}``. One demo takes about 8 minutes on
two idle cores: ``.venv/bin/python benchmarks/demo_seeds.py`` (seeds 1337 1338 1339).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "demo_seeds"
SEEDS = (1337, 1338, 1339)


def run_seed(seed: int, results: Path, threads: int | None) -> dict[str, Any]:
    """Run the demo with training seed ``seed`` and store its CORN test metrics."""
    from medssl.demo import run_demo

    used = C.set_threads(threads)
    t0 = time.perf_counter()
    demo = run_demo(C.WORK / NAME / f"s{seed}", overwrite=True, quiet=True, seed=seed)
    assert demo.evaluation_md is not None
    summary = json.loads((Path(demo.evaluation_md).parent / "summary.json").read_text(encoding="utf-8"))
    record = {"benchmark": NAME, "seed": seed,
              "metrics": {k: v["mean"] for k, v in summary["metrics"].items()},
              "n_cases": summary["metrics"]["dice"]["n"], "seconds": demo.seconds,
              "wall_seconds": time.perf_counter() - t0, "environment": C.environment(used)}
    from medssl.runtime.atomic import write_json_atomic

    write_json_atomic(results / f"s{seed}.json", record)
    return record


def write_table(results: Path, out: Path, command: str) -> Path | None:
    """``demo_seeds.{md,json}`` from the per-seed records (nothing is written before the first record)."""
    records = sorted(C.load_results(results), key=lambda r: r["seed"])
    if not records:
        return None
    dice = [100 * r["metrics"]["dice"] for r in records]
    body = [[r["seed"], f"{100 * r['metrics']['dice']:.2f}", f"{100 * r['metrics']['jaccard']:.2f}",
             f"{r['metrics']['hd95_vox']:.2f}", f"{r['metrics']['asd_vox']:.2f}",
             f"{r['seconds'].get('train_corn', float('nan')):.0f}"] for r in records]
    spread = (f"{statistics.fmean(dice):.2f} ± {statistics.stdev(dice):.2f}" if len(dice) > 1 else "—")
    md = "\n".join([
        "# The demo's CORN result over training seeds", "",
        f"Regenerate: `{command}` (runs only missing seeds; `--table-only` rebuilds this table).", "",
        "Protocol: `medssl demo --seed S` — the embedded data (synthesized at seed 0), text-guided 3D pretraining "
        "and CORN (`atrium3d_corn`, 240 iterations) with training seed S for both; CORN's final checkpoint scored "
        "on the held-out atrium3d test volumes. Same machine for every seed.", "",
        C.markdown_table(["seed", "Dice %", "Jaccard %", "95HD (vox)", "ASD (vox)", "CORN train s"], body), "",
        f"Dice over seeds: **{spread} %** (mean ± sample std of the per-run means).", ""])
    data = {"name": NAME, "command": command, "seeds": [r["seed"] for r in records],
            "dice_mean": statistics.fmean(dice) if dice else None,
            "dice_std": statistics.stdev(dice) if len(dice) > 1 else None}
    C.write_outputs(out, NAME, data, md)
    return out / f"{NAME}.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The demo's CORN result over training seeds.")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    C.add_table_args(p, NAME)
    args = p.parse_args(argv)
    command = C.table_command(NAME, argv)
    if not args.table_only:
        for seed in args.seeds:
            if (args.results / f"s{seed}.json").is_file():
                continue
            record = run_seed(seed, args.results, args.threads)
            C.say(f"seed {seed}: Dice {100 * record['metrics']['dice']:.2f} %")
    table = write_table(args.results, args.out, command)
    C.say(f"wrote {C.rel(table)}" if table else "no seed has been run yet: nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
