"""The demo runs the whole main job (here with the quick data counts and a few iterations)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medssl.demo import (
    DEMO_DATASETS,
    DEMO_PROMPTS,
    QUICK_CORN_ITERATIONS,
    QUICK_COUNTS,
    QUICK_PRETRAIN_EPOCHS,
    reproducibility_note,
    run_demo,
)
from medssl.errors import MedsslInputError
from medssl.runtime.metrics_log import read_metrics


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, quiet=True, iterations=QUICK_CORN_ITERATIONS, pretrain_epochs=QUICK_PRETRAIN_EPOCHS,
                      quick=True, seed=5)
    assert set(result.datasets) == {name for name, _, _ in DEMO_DATASETS}
    for name, _, _ in DEMO_DATASETS:
        images = list((result.datasets[name] / "images").iterdir())
        assert len(images) == QUICK_COUNTS[name]
        assert result.previews[name].stat().st_size > 5000  # a real montage, not an empty canvas

    # localization: one cache entry per image of each localized dataset, with previews
    for name, prompt in DEMO_PROMPTS:
        manifest = json.loads((result.roi_caches[name] / "manifest.json").read_text())
        assert manifest["entries"] == QUICK_COUNTS[name] and manifest["prompts"] == {prompt: QUICK_COUNTS[name]}
    atrium = json.loads((result.roi_caches["atrium3d"] / "manifest.json").read_text())
    assert atrium["images_with_roi"] == QUICK_COUNTS["atrium3d"]  # every phantom has a left atrium
    assert len(result.roi_previews) == 2 * len(DEMO_PROMPTS)

    # guided pretraining on the training volumes only, with actual mask ratios logged
    assert result.pretrain_run is not None
    rows = read_metrics(result.pretrain_run / "metrics.csv")
    train_ids = (result.datasets["atrium3d"] / "train.list").read_text().split()
    assert rows and all(0.0 < r["mask_ratio"] < 1.0 for r in rows if r.get("mask_ratio") is not None)
    manifest = json.loads((result.pretrain_run / "manifest.json").read_text())
    assert manifest["extra"]["pretrain"]["data"]["images"] == len(train_ids)
    assert result.reconstructions and all(p.stat().st_size > 5000 for p in result.reconstructions)
    assert result.encoder is not None and result.encoder.is_file()

    # CORN initialised from that encoder (both branches), then evaluated on the test volumes
    assert result.init_report is not None
    assert result.init_report["modules"] == ["net.branch1.encoder", "net.branch2.encoder"]
    run = result.semi_run
    assert run is not None and (run / "checkpoints" / "final.pt").is_file()
    rows = read_metrics(run / "metrics.csv")
    assert [r["iteration"] for r in rows] == [2] and rows[0]["pool_bytes"] > 0  # the final iteration is logged
    summary = (out / "SUMMARY.md").read_text()
    assert "Dice (%)" in summary and "empty predictions" in summary and "exported encoder" in summary
    assert reproducibility_note(5) in summary  # one seed, its spread, and why another machine differs
    for path in (result.pretrain_run, run):  # --seed reaches both training runs
        assert json.loads((path / "manifest.json").read_text())["seed"] == 5
    test_ids = (result.datasets["atrium3d"] / "test.list").read_text().split()
    predictions = sorted(p.name for p in (result.evaluation_md.parent / "predictions").iterdir())
    assert predictions == sorted(f"{c}.nii.gz" for c in test_ids)

    # one self-contained report over the ROI cache and both runs
    assert result.report is not None
    html = result.report.read_text()
    for name in ("atrium3d", "mwm_atrium3d", "corn_atrium3d"):
        assert name in html
    assert len(re.findall(r"data:image/png;base64,", html)) >= 4

    with pytest.raises(MedsslInputError, match="--overwrite"):
        run_demo(out, quiet=True, iterations=2)


def test_quoted_seed_spread_is_the_measured_one() -> None:
    """The spread the demo quotes is what ``benchmarks/demo_seeds.py`` measured (or None before it ran)."""
    from medssl import demo

    measured = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "demo_seeds.json"
    if not measured.is_file():
        assert demo.MEASURED_SEED_SPREAD is None
        assert "not been measured" in reproducibility_note(1)
        return
    data = json.loads(measured.read_text())
    if len(data["seeds"]) < 2:  # one seed has no spread yet
        assert demo.MEASURED_SEED_SPREAD is None
        return
    assert demo.MEASURED_SEED_SPREAD is not None
    seeds, mean, std = demo.MEASURED_SEED_SPREAD
    assert list(seeds) == data["seeds"]
    assert mean == pytest.approx(data["dice_mean"], abs=0.05) and std == pytest.approx(data["dice_std"], abs=0.05)
