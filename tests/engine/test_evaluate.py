"""Evaluation of a predictor over cases: metrics, summaries, NIfTI predictions and overlay PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medssl.engine.evaluate import EvalCase, evaluate_cases, prediction_to_labels
from medssl.engine.inference import sliding_window_predictor
from medssl.errors import MedsslInputError
from medssl.viz import GT_COLOUR, PRED_COLOUR, segmentation_overlay
from shared_paths import SHARED

SHAPE = (12, 12, 10)


def _cube(start: tuple[int, int, int], side: int = 6) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[tuple(slice(s, s + side) for s in start)] = 1
    return m


def _case(case_id: str, spacing=(2.0, 1.0, 1.0)) -> EvalCase:
    label = _cube((3, 3, 2))
    rng = np.random.default_rng(len(case_id))
    image = (label + 0.1 * rng.normal(size=SHAPE)).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.5)
    return EvalCase(case_id, image, label, affine=affine, spacing=spacing)


def test_perfect_and_shifted_predictions(tmp_path: Path) -> None:
    shifted = {"b": _cube((5, 3, 2))}  # ground truth shifted by 2 voxels along axis 0 (2 mm voxels)

    def predict(image: np.ndarray) -> np.ndarray:
        key = "b" if image[0, 0, 0] == cases[1].image[0, 0, 0] else "a"
        return shifted[key] if key in shifted else (image > 0.5).astype(np.uint8)

    cases = [_case("a"), _case("bb")]
    assert np.array_equal(cases[0].image > 0.5, cases[0].label)  # noise is small: thresholding is perfect
    result = evaluate_cases(predict, cases, tmp_path, progress=False)

    perfect, moved = result.per_case
    assert perfect["dice"] == 1.0 and perfect["jaccard"] == 1.0
    assert perfect["hd95_vox"] == 0.0 and perfect["asd_mm"] == 0.0
    assert moved["dice"] == pytest.approx(4 / 6) and moved["jaccard"] == pytest.approx(4 / 8)
    assert moved["hd95_vox"] == pytest.approx(2.0) and moved["hd95_mm"] == pytest.approx(4.0)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["n_empty_predictions"] == 0
    assert summary["metrics"]["dice"]["mean"] == pytest.approx((1 + 4 / 6) / 2)
    assert summary["metrics"]["dice"]["std"] == pytest.approx((1 - 4 / 6) / 2)  # population std of 2
    assert summary["metrics"]["hd95_mm"]["mean"] == pytest.approx(2.0)
    assert result.mean("jaccard") == pytest.approx(0.75)

    md = (tmp_path / "summary.md").read_text()
    assert "| Dice (%) | Jaccard (%) | 95HD (vox) | ASD (vox) | 95HD (mm) | ASD (mm) |" in md
    assert "83.33 ± 16.67" in md and "75.00 ± 25.00" in md and "empty predictions: 0" in md

    with open(tmp_path / "metrics_per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["a", "bb"]
    assert float(rows[1]["dice"]) == pytest.approx(4 / 6) and float(rows[1]["hd95_mm"]) == pytest.approx(4.0)
    assert rows[1]["empty_pred"] == "false" and int(rows[1]["pred_voxels"]) == 216

    for case, expected in ((cases[0], cases[0].label), (cases[1], shifted["b"])):
        nii = nib.load(str(tmp_path / "predictions" / f"{case.case_id}.nii.gz"))
        np.testing.assert_allclose(nii.affine, case.affine)
        np.testing.assert_array_equal(np.asarray(nii.dataobj), expected)
        png = Image.open(tmp_path / "overlays" / f"{case.case_id}.png")
        assert png.format == "PNG" and png.width > 100
    assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("policy", ["reference", "nan"])
def test_empty_prediction_is_reported(tmp_path: Path, policy: str) -> None:
    cases = [_case("full"), _case("none")]

    def predict(image: np.ndarray) -> np.ndarray:
        return np.zeros(image.shape, np.uint8) if image is cases[1].image else (image > 0.5).astype(np.uint8)

    result = evaluate_cases(predict, cases, tmp_path, empty_policy=policy, overlays=False, progress=False)
    empty = result.per_case[1]
    assert empty["empty_pred"] is True and empty["dice"] == 0.0 and empty["jaccard"] == 0.0
    assert result.n_empty_predictions == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["empty_prediction_cases"] == ["none"] and summary["empty_policy"] == policy
    md = (tmp_path / "summary.md").read_text()
    assert "**empty predictions: 1** (none)" in md and f"policy `{policy}`" in md
    if policy == "reference":
        assert empty["hd95_vox"] == 0.0 and empty["asd_mm"] == 0.0
        assert summary["metrics"]["hd95_vox"] == {"mean": 0.0, "std": 0.0, "n": 2}
    else:
        assert math.isnan(empty["hd95_vox"]) and math.isnan(empty["asd_mm"])
        assert summary["metrics"]["hd95_vox"] == {"mean": 0.0, "std": 0.0, "n": 1}  # NaN left out
        with open(tmp_path / "metrics_per_case.csv", newline="") as fh:
            assert list(csv.DictReader(fh))[1]["hd95_vox"] == "nan"
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(0.5)


def test_probabilities_largest_component_unlabelled_and_no_output_dir(tmp_path: Path) -> None:
    label = _cube((1, 1, 1), side=5)
    speck = np.zeros(SHAPE, np.uint8)
    speck[10, 10, 8] = 1  # a far-away false positive voxel

    def predict(image: np.ndarray) -> np.ndarray:
        fg = 0.9 * np.maximum(label, speck)
        return np.stack([1 - fg, fg]).astype(np.float32)  # probabilities [C, H, W, D]

    cases = [
        EvalCase("x", np.zeros(SHAPE, np.float32), label),
        EvalCase("unlabelled", np.zeros(SHAPE, np.float32)),
    ]
    plain = evaluate_cases(predict, cases, None, progress=False)
    assert plain.files == {} and plain.per_case[0]["pred_voxels"] == 126
    # the speck is sqrt(5² + 5² + 3²) from the cube corner (5, 5, 5), one of 98 + 1 surface voxels
    assert plain.per_case[0]["asd_vox"] == pytest.approx(math.sqrt(59) / 99)
    assert plain.per_case[1] == {"case_id": "unlabelled", "empty_pred": False, "pred_voxels": 126}
    cleaned = evaluate_cases(
        predict, cases, tmp_path, largest_component=True, spacing_in_mm=False, progress=False
    )
    assert cleaned.per_case[0]["dice"] == 1.0 and cleaned.per_case[0]["asd_vox"] == 0.0
    assert cleaned.summary["n_labeled"] == 1 and "hd95_mm" not in cleaned.summary["metrics"]
    assert "95HD (mm)" not in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "predictions" / "unlabelled.nii.gz").exists()
    # default geometry: the affine is the diagonal of the (unit) spacing
    np.testing.assert_allclose(nib.load(str(tmp_path / "predictions" / "x.nii.gz")).affine, np.eye(4))


def test_with_sliding_window_predictor(tmp_path: Path) -> None:
    def net(x: torch.Tensor) -> torch.Tensor:  # foreground logit = 4 * (intensity - 0.5)
        return torch.cat([torch.zeros_like(x), 4 * (x - 0.5)], dim=1)

    case = _case("sw")
    predict = sliding_window_predictor(net, patch=(8, 8, 8), stride=(4, 4, 2), batch_size=2)
    result = evaluate_cases(predict, [case], tmp_path, overlays=False, progress=False)
    assert result.per_case[0]["dice"] == 1.0


def test_case_validation_and_prediction_shapes() -> None:
    with pytest.raises(MedsslInputError, match="c1: label shape"):
        EvalCase("c1", np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(MedsslInputError, match="separators"):
        EvalCase("../up", np.zeros((4, 4, 4), np.float32))
    case = EvalCase("c2", np.zeros((4, 4, 4), np.float32), affine=np.diag([0.5, 0.7, 2.0, 1.0]))
    assert case.spacing == pytest.approx((0.5, 0.7, 2.0))
    with pytest.raises(MedsslInputError, match="c3: prediction of shape"):
        prediction_to_labels(np.zeros((4, 4)), (4, 4, 4), "c3")
    assert prediction_to_labels(np.full((4, 4, 4), 0.6), (4, 4, 4)).sum() == 64
    with pytest.raises(MedsslInputError, match="appears twice"):
        evaluate_cases(lambda im: im > 0, [case, case], None, progress=False)


def _shared_root() -> Path:
    return SHARED


def test_overlay_of_a_real_left_atrium_case(tmp_path: Path) -> None:
    import h5py

    root = _shared_root() / "data" / "la"
    case_dir = sorted(p for p in root.iterdir() if (p / "mri_norm2.h5").exists())[0]
    with h5py.File(case_dir / "mri_norm2.h5", "r") as fh:
        image, label = fh["image"][:], fh["label"][:]
    pred = ndimage.binary_dilation(np.roll(label, 6, axis=0), iterations=2).astype(np.uint8)
    out = segmentation_overlay(image, label, pred, tmp_path / "overlay.png", title=case_dir.name)
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)

    def pixels_near(colour: str) -> int:
        target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(rgb - target).sum(axis=-1) < 40).sum())

    assert rgb.shape[1] > 3 * rgb.shape[0] / 2  # three panels side by side
    assert pixels_near(GT_COLOUR) > 200 and pixels_near(PRED_COLOUR) > 200


def test_progress_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [_case("p1"), _case("p2")]
    evaluate_cases(lambda im: (im > 0.5).astype(np.uint8), cases, None, overlays=False)
    printed = capsys.readouterr().out
    assert "evaluate" in printed and "2/2" in printed
    evaluate_cases(lambda im: (im > 0.5).astype(np.uint8), cases, None, progress=False)
    assert capsys.readouterr().out == ""
