"""The bookkeeping of the Mask What Matters transfer benchmarks (benchmarks/_mim.py): grid keys, the
configs each stage gets, and the tables built from per-point results (no training here)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import _mim as M  # noqa: E402


def test_point_keys_round_trip_for_every_arm() -> None:
    for arm in M.ARMS:
        p = M.Point(arm, 1338)
        assert M.Point.parse(p.key) == p
    assert M.Point("guided_0.8_0.4", 7).key == "guided_0.8_0.4_s7"
    for bad in ("guided_0.8_0.4", "nonsense_s1", "random_0.7_sx"):
        with pytest.raises(ValueError):
            M.Point.parse(bad)


def test_grid_orders_seed_then_arm() -> None:
    points = M.grid(["scratch", "random_0.6"], [1, 2])
    assert [p.key for p in points] == ["scratch_s1", "random_0.6_s1", "scratch_s2", "random_0.6_s2"]


def _proto(tmp: Path, **kw: object) -> M.Protocol:
    settings = {"n": 10, "data_seed": 0, "image_size": 64, "pretrain_epochs": 2, "classify_epochs": 3,
                "detect_epochs": 3, "detect_size": 96, "rule": "any"}
    settings.update(kw)
    return M.Protocol(M.BRAIN2D, **settings)  # type: ignore[arg-type]


def test_stage_configs_follow_the_protocol(tmp_path: Path) -> None:
    proto = _proto(tmp_path)
    pre = M.pretrain_config(proto, M.ARMS["guided_0.7_0.3"], 5, tmp_path, 1)
    assert (pre.masking.kind, tuple(pre.masking.ratios), pre.masking.rule) == ("guided", (0.7, 0.3), "any")
    assert (pre.data.image_size, pre.optim.epochs, pre.runtime.seed, pre.runtime.threads) == (64, 2, 5, 1)
    assert pre.data.roi_prompt == M.BRAIN2D.prompt and pre.data.split is None  # all training-list images
    rnd = M.pretrain_config(proto, M.ARMS["random_0.6"], 5, tmp_path, 1)
    assert (rnd.masking.kind, rnd.masking.ratio) == ("random", 0.6)
    enc = tmp_path / "encoder.pt"
    cls = M.classify_config(proto, 5, enc, tmp_path, 1)
    assert (cls.model.image_size, cls.epochs, Path(cls.init)) == (64, 3, enc)
    assert M.classify_config(proto, 5, None, tmp_path, 1).init is None
    det = M.detect_config(proto, 5, enc, tmp_path, 1)
    # the preset trains 6 epochs with lr steps at epochs 4 and 5.5: kept at the same fractions of 3 epochs
    assert det.optim.decay_epochs == [2.0, 2.75]
    assert (det.model.min_size, det.model.max_size, det.validate_every, det.epochs) == (96, 96, 0, 3)
    with pytest.raises(ValueError):
        M.ARMS["scratch"].masking("topleft")


def test_config_id_depends_on_the_experiment_not_on_paths(tmp_path: Path) -> None:
    proto = _proto(tmp_path)
    a = M.MimJob(proto, M.Point("random_0.7", 1), tmp_path / "r1", tmp_path / "raw1", threads=1)
    b = M.MimJob(proto, M.Point("random_0.7", 1), tmp_path / "r2", tmp_path / "raw2", threads=1)
    assert a.config_id() == b.config_id()
    longer = M.MimJob(_proto(tmp_path, pretrain_epochs=3), M.Point("random_0.7", 1), tmp_path, tmp_path, threads=1)
    other_arm = M.MimJob(proto, M.Point("random_0.6", 1), tmp_path, tmp_path, threads=1)
    assert len({a.config_id(), longer.config_id(), other_arm.config_id()}) == 3
    # the id names the protocol; the seed is in the point's key (result file and run folder)
    other_seed = M.MimJob(proto, M.Point("random_0.7", 2), tmp_path, tmp_path, threads=1)
    assert other_seed.config_id() == a.config_id() and other_seed.point_dir() != a.point_dir()
    # a stage keeps its id (and so its run) when only another stage's settings change
    ids, ids_longer = a.stage_ids(), longer.stage_ids()
    assert ids["pretrain"] != ids_longer["pretrain"]
    assert ids["classify"] != ids_longer["classify"]  # its encoder changed
    more_cls = M.MimJob(_proto(tmp_path, classify_epochs=9), M.Point("random_0.7", 1), tmp_path, tmp_path, threads=1)
    assert more_cls.stage_ids()["pretrain"] == ids["pretrain"] and more_cls.stage_ids()["classify"] != ids["classify"]
    assert a.configs()["classify"].runtime.name == f"classify_{ids['classify']}"
    assert a.encoder_path() == a.point_dir() / f"encoder_{ids['pretrain']}.pt"
    assert Path(a.configs()["classify"].init) == a.encoder_path()
    scratch = M.MimJob(proto, M.Point("scratch", 1), tmp_path, tmp_path, threads=1)
    assert scratch.stage_ids()["pretrain"] is None and scratch.configs()["classify"].init is None


def test_options_added_later_keep_old_ids_at_their_original_value(tmp_path: Path) -> None:
    """``masking.counts`` came after results were committed: at ``floor`` (the behaviour from before) it is
    not part of the stage hash, so those results stay valid; ``stochastic`` is another protocol."""
    import _common as C

    job = M.MimJob(_proto(tmp_path), M.Point("guided_0.8_0.4", 1), tmp_path, tmp_path, threads=1)
    pre = job.configs()["pretrain"]
    assert pre.masking.counts == "floor"
    data = M._config_data(pre)
    assert "counts" not in data["masking"] and data["masking"]["ratios"] == [0.8, 0.4]
    other = M._config_data(pre.model_copy(update={"masking": pre.masking.model_copy(update={"counts": "stochastic"})}))
    assert other["masking"]["counts"] == "stochastic"
    assert C.short_hash({"pretrain": other}) != C.short_hash({"pretrain": data}) == job.stage_ids()["pretrain"]
    nested = {"masking": {"counts": "floor", "rule": "any"}, "model": {"counts": "floor"}}
    assert C.without_later_defaults(nested) == {"masking": {"rule": "any"}, "model": {"counts": "floor"}}


def _result(arm: str, seed: int, acc: float, ratio: float | None, box_ap: float) -> dict:
    pre = None if ratio is None else {"actual_overall": ratio, "expected_overall": 0.5,
                                      "expected_overall_fixed_count": 0.55, "actual_roi": None,
                                      "actual_background": ratio, "roi_patch_fraction": 0.0,
                                      "loss_per_epoch": [1.0, 0.8], "seconds": 10.0, "images": 16,
                                      "iterations": 4, "batch_size": 8, "grid": [3, 3]}
    return {"benchmark": "mim_brain2d", "arm": arm, "seed": seed, "config_id": "x", "seconds": 30.0,
            "pretraining": pre,
            "classification": {"test": {"accuracy": acc, "balanced_accuracy": acc, "auroc": 0.9, "f1": acc},
                               "best_val": {"accuracy": 0.75}, "final_val": {"accuracy": 0.5}, "best_epoch": 2,
                               "seconds": 12.0, "train_images": 12, "val_images": 4, "test_images": 4, "epochs": 3,
                               "iterations_per_epoch": 2, "batch_size": 6},
            "detection": {"test": {"box_ap": box_ap, "mask_ap": box_ap / 2, "box_ap50": 0.5, "mask_ap50": 0.4},
                          "seconds": 8.0, "train_images": 16, "test_images": 4, "image_size": 128, "iterations": 12,
                          "batch_size": 4},
            "protocol": {"description": "tiny"}, "command": "cmd"}


def test_summary_rows_mean_and_sample_std_over_seeds() -> None:
    results = [_result("random_0.6", 1, 0.50, 0.55, 0.10), _result("random_0.6", 2, 0.70, 0.57, 0.20),
               _result("scratch", 1, 0.40, None, 0.05)]
    rows = M.summary_rows(results, list(M.ARMS))
    assert [r["arm"] for r in rows] == ["scratch", "random_0.6"]  # table order = ARMS order
    r = rows[1]
    sd = statistics.stdev([50.0, 70.0])
    assert r["cls_accuracy"] == f"60.0 ± {sd:.1f}" and r["seeds"] == [1, 2]
    assert math.isclose(r["actual_overall_mean"], 0.56)
    assert r["actual_overall"] == f"56.0 ± {statistics.stdev([55.0, 57.0]):.1f}"
    assert r["det_box_ap"] == f"15.0 ± {statistics.stdev([10.0, 20.0]):.1f}" and r["det_seeds"] == 2
    assert r["cls_best_val_accuracy"] == "75.0 ± 0.0"
    assert rows[0]["actual_overall"] == "—" and rows[0]["cls_accuracy"] == "40.0"
    assert r["seconds"] == {"pretraining": 10.0, "classification": 12.0, "detection": 8.0, "point": 30.0}


def test_write_report_tables_and_plot(tmp_path: Path) -> None:
    results_dir = tmp_path / "mim_brain2d"
    results_dir.mkdir()
    for r in (_result("random_0.6", 1, 0.5, 0.55, 0.1), _result("guided_0.8_0.4", 1, 0.75, 0.48, 0.3)):
        (results_dir / f"{r['arm']}_s{r['seed']}.json").write_text(json.dumps(r), encoding="utf-8")
    args = argparse.Namespace(results=results_dir, out=tmp_path)
    md = M.write_report(args, _proto(tmp_path), "cmd").read_text(encoding="utf-8")
    assert "| guided_0.8_0.4 | 1 | 48.0 | 75.0 | 75.0 | 90.0 | 75.0 | 50.0 | 75.0 |" in md
    assert "| random_0.6 | 1 | 55.0 | 10.0 | 5.0 | 50.0 | 40.0 |" in md
    assert ("pretraining 16 images × 2 epochs = 4 iterations of batch 8 (3×3 patch grid); classification 12 "
            "training / 4 validation / 4 test images, 3 epochs = 6 iterations of batch 6; detection 16 training / "
            "4 test images at 128 px, 12 iterations of batch 4.") in md
    summary = json.loads((tmp_path / "mim_brain2d.json").read_text(encoding="utf-8"))
    assert {(r["arm"], r["actual_mask_ratio"]) for r in summary["runs"]} == {("random_0.6", 0.55),
                                                                              ("guided_0.8_0.4", 0.48)}
    assert (tmp_path / "mim_brain2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
