"""Run kinds the report knows (pretrain, classify, detect, localize) and one it does not, from fake-but-valid
run directories written with medssl's own writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medssl.data.io import write_png
from medssl.errors import MedsslInputError
from medssl.report import build_report, collect_run, detect_kind
from medssl.report.summary import Value
from medssl.runtime.atomic import write_json_atomic, write_text_atomic
from medssl.runtime.metrics_log import MetricsLogger


def _png(path: Path, h: int = 40, w: int = 60) -> Path:
    ramp = np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))
    return write_png(path, ramp)


def _pretrain_run(root: Path) -> Path:
    write_text_atomic(root / "config.yaml", "model:\n  backbone: resnet18\nmasking:\n  kind: guided\n"
                      "  ratios: [0.8, 0.4]\nepochs: 2\n")
    write_json_atomic(root / "manifest.json", {"command": ["medssl", "pretrain", "run"], "seed": 3,
                                               "extra": {"expected_overall_ratio": 0.52}})
    with MetricsLogger(root, enable_tensorboard=False) as log:
        for it in range(1, 9):
            log.log(it, {"loss": 1.0 / it, "lr": 1e-4 * it, "wd": 0.04 + 0.01 * it,
                         "mask_ratio_roi": 0.8, "mask_ratio_bg": 0.4, "mask_ratio": 0.5})
        log.log(8, {"loss": 0.2}, phase="epoch")
    _png(root / "figures" / "recon_epoch_2.png")
    return root


def _localize_cache(root: Path) -> Path:
    write_json_atomic(root / "manifest.json", {"format_version": "2", "entries": 3, "images": 3,
                                               "images_with_roi": 2, "empty_entries": 1,
                                               "mean_roi_fraction": 0.125, "backends": {"structures": 3},
                                               "prompts": {"left atrium": 3}})
    write_json_atomic(root / "entries" / "abc.json", {"key": "abc", "accuracy": 0.5})  # never read
    _png(root / "entries" / "abc.roi.png")
    _png(root / "previews" / "case_1.png")
    _png(root / "previews" / "case_10.png")
    _png(root / "previews" / "case_2.png")
    return root


def test_detect_kind_from_config_manifest_and_results() -> None:
    assert detect_kind({"method": "corn", "method_config": {}}, None, {}) == "semi"
    assert detect_kind({"masking": {"kind": "random"}}, None, {}) == "pretrain"
    assert detect_kind(None, None, {"results.json": {"final": {"box_ap": 0.1, "mask_ap": 0.2}}}) == "detect"
    assert detect_kind(None, None, {"results.json": {"final": {"metrics": {"auroc": 0.7}}}}) == "classify"
    assert detect_kind(None, {"format_version": "2", "entries": 0}, {}) == "localize"
    assert detect_kind(None, {"command": ["medssl", "finetune", "detect"]}, {}) == "detect"
    assert detect_kind({"model": {}}, {"command": ["python", "train.py"]}, {"other.json": {"a": 1}}) == "unknown"


def test_pretrain_run_curves_and_reconstruction_previews(tmp_path: Path) -> None:
    run = _pretrain_run(tmp_path / "pre")
    summary = collect_run(run)
    assert summary.kind == "pretrain"
    assert ("expected_overall_ratio", "0.52") in summary.facts
    assert ("masking", "kind guided, ratios [0.8, 0.4]") in summary.facts
    assert [f.caption for f in summary.figures] == ["Reconstruction preview, epoch 2"]
    # no evaluation: the headline is the last training row's loss and mask ratios
    (headline,) = summary.headlines
    assert headline.values == {"loss": Value(1.0 / 8), "mask_ratio_roi": Value(0.8), "mask_ratio_bg": Value(0.4),
                               "mask_ratio": Value(0.5)}
    out = build_report([run], tmp_path / "pre.html")
    page = out.read_text(encoding="utf-8")
    for group in ("train-losses", "train-schedule", "train-masking", "epoch-losses"):
        assert f'data-group="{group}"' in page
    assert "Training: learning rate and weight decay (log scale): lr, wd" in page
    assert "Reconstruction previews" in page


def test_classify_results_best_vs_final_side_by_side(tmp_path: Path) -> None:
    run = tmp_path / "clf"
    write_text_atomic(run / "config.yaml", "model:\n  backbone: resnet18\n")
    results = {"best": {"label": "best (selected on validation)", "epoch": 3,
                        "metrics": {"accuracy": 0.8, "auroc": 0.9}},
               "final": {"label": "final epoch", "epoch": 5, "metrics": {"accuracy": 0.7, "auroc": 0.95}},
               "test": {"epoch": 5, "metrics": {"accuracy": 0.65, "auroc": 0.85}},
               "n_test": 12}
    write_json_atomic(run / "results.json", results)
    write_text_atomic(run / "results.md", "# Results\n\n| | accuracy |\n|---|---|\n| final | 0.7 |\n")
    summary = collect_run(run)
    assert summary.kind == "classify"
    table = next(t for t in summary.tables if t.title == "Results" and len(t.columns) == 4)
    assert table.columns == ["metric", "best (selected on validation)", "final epoch", "test"]
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["accuracy"] == [Value(0.8), Value(0.7), Value(0.65)]
    assert rows["epoch"] == [Value(3.0, integer=True), Value(5.0, integer=True), Value(5.0, integer=True)]
    assert [c.text() for c in rows["epoch"]] == ["3", "5", "5"]
    scalars = next(t for t in summary.tables if t.columns == ["name", "value"])
    assert scalars.rows == [["n_test", Value(12.0, integer=True)]]
    assert [h.source for h in summary.headlines] == [
        "results.json: best (selected on validation)", "results.json: final epoch", "results.json: test"]
    assert summary.headlines[2].values == {"accuracy": Value(0.65), "auroc": Value(0.85)}
    page = build_report([run], tmp_path / "clf.html").read_text(encoding="utf-8")
    assert '<td class="num" data-value="0.65">0.6500</td>' in page
    assert "<summary>results.md</summary>" in page and "<th>accuracy</th>" in page  # the run's own markdown


def test_detect_and_localize_runs(tmp_path: Path) -> None:
    det = tmp_path / "det"
    write_json_atomic(det / "manifest.json", {"command": ["medssl", "finetune", "detect"], "seed": 0})
    write_json_atomic(det / "results.json", {"final": {"box_ap": 0.31, "box_ap50": 0.6, "mask_ap": 0.28}})
    _png(det / "figures" / "val_case_3.png")
    summary = collect_run(det)
    assert summary.kind == "detect"
    assert summary.headlines[0].values == {"box_ap": Value(0.31), "box_ap50": Value(0.6), "mask_ap": Value(0.28)}
    assert summary.figures[0].caption.startswith("Predictions (boxes and masks)")

    cache = _localize_cache(tmp_path / "cache")
    loc = collect_run(cache)
    assert loc.kind == "localize" and loc.manifest is None
    coverage = next(t for t in loc.tables if t.title == "ROI cache coverage")
    assert dict((r[0], r[1]) for r in coverage.rows)["mean_roi_fraction"] == Value(0.125)
    assert {t.title for t in loc.tables} >= {"ROI cache coverage: backends", "ROI cache coverage: prompts"}
    # previews in natural order; nothing read from entries/
    assert [f.path.name for f in loc.figures] == ["case_1.png", "case_2.png", "case_10.png"]
    assert all(f.caption.startswith("ROI preview") for f in loc.figures)
    assert not any("entries" in t.source for t in loc.tables)
    out = build_report([det, cache], tmp_path / "two.md")
    text = out.read_text(encoding="utf-8")
    assert "#### Detection\n\n*headline metrics*\n\n| run | evaluation | box_ap | box_ap50 | mask_ap |" in text
    assert "| det | results.json: final | 0.3100 | 0.6000 | 0.2800 |" in text
    assert "| cache | manifest.json | 3 | 2 | 0.1250 |" in text
    assert len(list((tmp_path / "two_files").iterdir())) == 4


def test_unknown_run_renders_and_reports_unreadable_files(tmp_path: Path) -> None:
    run = tmp_path / "odd"
    with MetricsLogger(run, enable_tensorboard=False) as log:
        log.log(1, {"zeta": 1.0, "big": 5e6, "nanny": float("nan")})
        log.log(2, {"zeta": 2.0, "big": 6e6}, phase="probe")
    write_json_atomic(run / "stats" / "numbers.json", {"alpha": 1, "nested": {"beta": 2.5}, "name": "odd"})
    write_text_atomic(run / "broken.json", "{not json")
    write_text_atomic(run / "figures" / "broken.png", "not a png")
    _png(run / "figures" / "fine.png")
    write_text_atomic(run / "figures" / ".fine.png.tmp123.png", "a write in progress")
    summary = collect_run(run)
    assert summary.kind == "unknown" and summary.manifest is None and summary.config is None
    assert any(n.startswith("broken.json: cannot be read as JSON") for n in summary.notes)
    out = build_report([run], tmp_path / "odd.html")
    page = out.read_text(encoding="utf-8")
    assert "not a readable image" in page and "broken.png" in page
    assert page.count("<figure") == 1 + 2  # fine.png + train-other + probe-scores curves
    assert 'data-group="train-other"' in page and 'data-group="probe-scores"' in page
    tables = {t.title: t for t in summary.tables}
    assert tables["Numbers (stats)"].rows == [["alpha", Value(1.0, integer=True)]]
    assert tables["Numbers (stats): nested"].rows == [["beta", Value(2.5)]]
    assert "name: odd" in tables["Numbers (stats)"].notes
    assert 'class="kind kind-unknown">unknown' in page


def test_bad_outputs_are_refused_before_writing(tmp_path: Path) -> None:
    run = _pretrain_run(tmp_path / "pre")
    with pytest.raises(MedsslInputError, match="give at least one run"):
        build_report([], tmp_path / "r.html")
    with pytest.raises(MedsslInputError, match="is a folder"):
        build_report([run], run)
    with pytest.raises(MedsslInputError, match=r"\[0, 1\)"):
        build_report([run], tmp_path / "r.html", smoothing=1.0)
    foreign = tmp_path / "r_files"
    write_text_atomic(foreign / "keep.txt", "user data")
    with pytest.raises(MedsslInputError, match="refusing to replace"):
        build_report([run], tmp_path / "r.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre", "r_files"]
    assert (foreign / "keep.txt").read_text() == "user data"
    # a report written into the run folder is not read back into the next report
    first = build_report([run], run / "report.md").read_text(encoding="utf-8")
    again = build_report([run], run / "report.md").read_text(encoding="utf-8")
    assert again.count("<summary>report.md</summary>") == 0
    assert again.count("](report_files/") == first.count("](report_files/") == 4 + 1  # 4 curve groups, 1 figure
    assert build_report([run], tmp_path / "r.txt", fmt="html").read_text(encoding="utf-8").startswith(
        "<!DOCTYPE html>")


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path: Path) -> None:
    for parent, ap in (("a", 0.25), ("b", 0.5)):
        write_json_atomic(tmp_path / parent / "same" / "results.json", {"final": {"box_ap": ap}})
        write_json_atomic(tmp_path / parent / "same" / "manifest.json", {"command": ["x"]})
    text = build_report([tmp_path / "a" / "same", tmp_path / "b" / "same"], tmp_path / "r.md").read_text()
    assert "| a/same | results.json: final | 0.2500 |" in text and "| b/same | results.json: final | 0.5000 |" in text
    assert "## a/same (detect)" in text and "## b/same (detect)" in text
