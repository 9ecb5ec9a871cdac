"""The demo runs the whole current pipeline (here with a 2-iteration training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl.demo import DEMO_DATASETS, run_demo
from medssl.errors import MedsslInputError
from medssl.runtime.metrics_log import read_metrics


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, quiet=True, iterations=2)
    assert set(result.datasets) == {name for name, _, _ in DEMO_DATASETS}
    for name, n, _ in DEMO_DATASETS:
        images = list((result.datasets[name] / "images").iterdir())
        assert len(images) == n
        assert result.previews[name].stat().st_size > 5000  # a real montage, not an empty canvas
    run = result.semi_run
    assert run is not None and (run / "checkpoints" / "final.pt").is_file()
    rows = read_metrics(run / "metrics.csv")
    assert [r["iteration"] for r in rows] == [2] and rows[0]["pool_bytes"] > 0  # the final iteration is logged
    summary = (out / "SUMMARY.md").read_text()
    assert "Dice (%)" in summary and "empty predictions" in summary
    test_ids = (result.datasets["atrium3d"] / "test.list").read_text().split()
    predictions = sorted(p.name for p in (result.evaluation_md.parent / "predictions").iterdir())
    assert predictions == sorted(f"{c}.nii.gz" for c in test_ids)

    with pytest.raises(MedsslInputError, match="--overwrite"):
        run_demo(out, quiet=True, iterations=2)
