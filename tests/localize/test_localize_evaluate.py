"""evaluate_localization on a hand-built cache: every number against geometry worked out by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medssl.data.io import ImageData, read_image, write_png
from medssl.errors import MedsslInputError
from medssl.localize import LocalizationResult, RoiCache, boxes_to_mask, make_provenance
from medssl.localize.evaluate import evaluate_localization


class KnownLocalizer:
    """Test backend returning fixed products: coarse = target shifted by ``shift`` columns, refined = target,
    ROI = the target's box grown by one pixel on every side."""

    name = "known"
    model_id = None
    model_revision = None

    def __init__(self, target: np.ndarray, shift: int, with_intermediates: bool = True) -> None:
        self.target, self.shift, self.with_intermediates = target, shift, with_intermediates

    def params(self) -> dict[str, Any]:
        return {"rule": "known"}  # the shift differs per image only, never for one image

    def localize(self, image: ImageData, prompt: str, context: dict | None = None) -> LocalizationResult:
        rows, cols = np.nonzero(self.target)
        box = ((int(rows.min()) - 1, int(rows.max()) + 2), (int(cols.min()) - 1, int(cols.max()) + 2))
        result = LocalizationResult(roi=boxes_to_mask([box], self.target.shape), boxes=[box],
                                    provenance=make_provenance(self, prompt))
        if self.with_intermediates:
            result.coarse_mask = np.roll(self.target, self.shift, axis=1)
            result.refined_mask = self.target.copy()
        return result


def _square() -> np.ndarray:
    """A 6x6 target in a 12x12 image."""
    target = np.zeros((12, 12), bool)
    target[2:8, 2:8] = True
    return target


def _dataset(root: Path) -> tuple[Path, Path, RoiCache]:
    """images/a.png, images/b.png (+ images/c.png without a label), labels with the 6x6 target (value 2)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        write_png(root / "images" / f"{name}.png", rng.integers(0, 255, (12, 12), dtype=np.uint8))
    label = np.zeros((12, 12), np.uint8)
    label[_square()] = 2
    label[10, 10] = 1  # a second label value, foreground only by default
    for name in ("a", "b"):
        write_png(root / "labels" / f"{name}.png", label)
    cache = RoiCache(root / "cache")
    for name, shift in (("a", 1), ("b", 2), ("c", 1)):
        image = read_image(root / "images" / f"{name}.png")
        cache.get_or_compute(image, "find the square", KnownLocalizer(_square(), shift))
    return root / "cache", root / "labels", cache


# Hand numbers for the 6x6 target G (ring of 20 pixels) with label_values=[2], NSD tolerance 1 pixel:
# coarse = G shifted by k columns: Dice = precision = recall = (6 - k) / 6; NSD k=1: all 40 ring pixels
# within 1 -> 1.0; k=2: per ring 8 at 0, 4 at 1, 8 at 2 -> 24 / 40.
# refined = G: all 1.0.
# boxes = 8x8 box (ring of 28 pixels: 24 edge pixels 1 away from G's ring, 4 corners sqrt(2) away; every
# pixel of G's ring is 1 away): Dice 72 / 100, precision 36 / 64, recall 1, NSD (24 + 20) / 48.
HAND = {
    ("a", "coarse"): (5 / 6, 1.0, 5 / 6, 5 / 6),
    ("b", "coarse"): (4 / 6, 24 / 40, 4 / 6, 4 / 6),
    ("a", "refined"): (1.0, 1.0, 1.0, 1.0),
    ("b", "refined"): (1.0, 1.0, 1.0, 1.0),
    ("a", "boxes"): (0.72, 44 / 48, 36 / 64, 1.0),
    ("b", "boxes"): (0.72, 44 / 48, 36 / 64, 1.0),
}
METRICS = ("dice", "nsd", "precision", "recall")


def test_scores_csv_json_and_markdown_equal_hand_numbers(tmp_path: Path) -> None:
    cache_dir, labels, _ = _dataset(tmp_path)
    result = evaluate_localization(cache_dir, labels, tolerance=1.0, label_values=[2], out_dir=tmp_path / "out")
    got = {(Path(r["image"]).stem, r["product"]): tuple(r[m] for m in METRICS) for r in result.rows}
    assert got.keys() == HAND.keys()
    for key, expected in HAND.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, err_msg=str(key))
    assert result.unmatched == [str(tmp_path / "images" / "c.png")]
    with open(tmp_path / "out" / "localization_per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    for row in rows:
        np.testing.assert_allclose([float(row[m]) for m in METRICS], HAND[(Path(row["image"]).stem, row["product"])])
    saved = json.loads((tmp_path / "out" / "localization.json").read_text())
    (group,) = saved["groups"]
    assert (group["images"], group["params"], group["backend"]) == (2, {"rule": "known"}, "known")
    markdown = (tmp_path / "out" / "localization.md").read_text()
    for product, label in (("coarse", "coarse mask"), ("refined", "refined mask (SAM)"), ("boxes", "ROI boxes")):
        values = np.asarray([HAND[("a", product)], HAND[("b", product)]])
        cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(values.mean(0), values.std(0), strict=True))
        assert f"| {label} | {cells} |" in markdown


def test_groups_filters_and_label_values(tmp_path: Path) -> None:
    cache_dir, labels, cache = _dataset(tmp_path)
    cache.get_or_compute(read_image(tmp_path / "images" / "a.png"), "another prompt", KnownLocalizer(_square(), 0))
    result = evaluate_localization(cache_dir, labels, tolerance=1.0, label_values=[2])
    assert sorted((g["prompt"], g["images"]) for g in result.groups) == [("another prompt", 1), ("find the square", 2)]
    assert (cache_dir / "evaluation" / "localization.md").read_text().count("| product |") == 2
    only = evaluate_localization(cache_dir, labels, prompt="another prompt", tolerance=1.0, label_values=[2])
    assert [(r["product"], r["dice"]) for r in only.rows] == [("coarse", 1.0), ("refined", 1.0), ("boxes", 0.72)]
    # default foreground = every nonzero value: the extra pixel (value 1) joins the target
    default = evaluate_localization(cache_dir, labels, prompt="find the square", tolerance=1.0)
    refined_a = next(r for r in default.rows if Path(r["image"]).stem == "a" and r["product"] == "refined")
    assert refined_a["gt_voxels"] == 37 and refined_a["precision"] == 1.0
    assert refined_a["recall"] == pytest.approx(36 / 37) and refined_a["dice"] == pytest.approx(72 / 73)
    with pytest.raises(MedsslInputError, match="no cached ROI"):
        evaluate_localization(cache_dir, labels, prompt="a prompt never used")
    with pytest.raises(MedsslInputError, match=r"\(0 matching cache entries\)"):
        evaluate_localization(cache_dir, labels, backend="other")


def test_roi_only_entries_score_boxes_only_and_shape_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", np.full((12, 12), 9, np.uint8))
    label = np.zeros((12, 12), np.uint8)
    label[_square()] = 1
    write_png(tmp_path / "labels" / "a.png", label)
    cache = RoiCache(tmp_path / "cache")
    cache.get_or_compute(read_image(tmp_path / "images" / "a.png"), "p", KnownLocalizer(_square(), 0, False))
    result = evaluate_localization(tmp_path / "cache", tmp_path / "labels", tolerance=1.0)
    assert [r["product"] for r in result.rows] == ["boxes"]
    np.testing.assert_allclose([result.rows[0][m] for m in METRICS], HAND[("a", "boxes")])
    write_png(tmp_path / "labels" / "a.png", np.zeros((12, 13), np.uint8))
    with pytest.raises(MedsslInputError, match=r"a\.png: label shape \(12, 13\) does not match the ROI shape"):
        evaluate_localization(tmp_path / "cache", tmp_path / "labels")
    with pytest.raises(MedsslInputError, match="label folder does not exist"):
        evaluate_localization(tmp_path / "cache", tmp_path / "nope")


def test_ignore_label_pixels_are_left_out(tmp_path: Path) -> None:
    """Label 255 = ignore: a ROI spilling onto the ignore region loses nothing (precision 1, not 6 / 10)."""
    from medssl.localize import create_localizer

    write_png(tmp_path / "images" / "a.png", np.arange(36, dtype=np.uint8).reshape(6, 6))
    label = np.zeros((6, 6), np.uint8)
    label[0:2, 0:3] = 1
    label[4:6, 4:6] = 255
    write_png(tmp_path / "labels" / "a.png", label)
    write_png(tmp_path / "maps" / "a.png", (label > 0).astype(np.uint8))
    cache = RoiCache(tmp_path / "cache")
    cache.get_or_compute(read_image(tmp_path / "images" / "a.png"), "x", create_localizer("files", root=tmp_path / "maps"))
    result = evaluate_localization(tmp_path / "cache", tmp_path / "labels", tolerance=1.0)
    (row,) = [r for r in result.rows if r["product"] == "boxes"]
    assert (row["dice"], row["precision"], row["recall"]) == (1.0, 1.0, 1.0)
