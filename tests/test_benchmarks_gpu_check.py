"""benchmarks/gpu_check.py's logic on the CPU (``--tiny``): every kind of case runs, the results are
written after each case, the table names every variant, and the time budget skips what would not fit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check as G  # noqa: E402


def test_plan_orders_compilation_last_and_corn_first() -> None:
    cases = G.plan()
    kinds = [k for k, _ in cases]
    assert kinds.index("spark") < kinds.index("inference") < cases.index(("train", ("corn", "compiled")))
    compiled = [args[0] for k, args in cases if k == "train" and args[1] == "compiled"]
    assert compiled[:2] == ["corn", "dual_branch"] and sorted(compiled) == sorted(G.METHODS)
    assert {args for k, args in cases if k == "train"} == {(m, v) for m in G.METHODS
                                                          for v in (*G.TRAIN_VARIANTS, "compiled")}


def test_tiny_dry_run_measures_every_kind_of_case(tmp_path: Path) -> None:
    data = G.run(G.TINY, tmp_path, budget_s=600.0, tiny=True, methods=("corn",))
    results = {(r["method"], r["variant"]): r for r in data["results"]}
    assert not [r for r in data["results"] if "error" in r], data["results"]
    assert set(results) == {("corn", v) for v in ("fp32", "bf16", "channels_last", "compiled")} | {
        ("spark_resnet18_64", "32"), ("corn_branch1", "sliding_window")}
    corn = results[("corn", "fp32")]
    assert corn["gflop_per_iter"] > 0 and corn["iter_per_sec"] > 0 and corn["tflops"] > 0
    assert corn["logs"]["coral_terms"] >= 0 and results[("corn", "compiled")]["compiled"] == ["net"]
    assert results[("corn_branch1", "sliding_window")]["speedup"] > 0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(saved["results"]) == 6 and saved["tiny"] is True
    table = (tmp_path / "gpu_check.md").read_text()
    assert "TINY CPU dry run" in table and table.count("| corn |") == 4


def test_budget_skips_the_remaining_cases(tmp_path: Path) -> None:
    data = G.run(G.TINY, tmp_path, budget_s=0.0, tiny=True, methods=("corn",))
    assert len(data["results"]) == 1 and len(data["skipped"]) == 5  # the first case always starts
    assert "Skipped (time budget" in (tmp_path / "gpu_check.md").read_text()
