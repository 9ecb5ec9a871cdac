"""COCO BoxAP / MaskAP: exact values on hand-built cases (IoU computed in the test, ranking by score)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from medssl.metrics.detection import DETECTION_KEYS, SIZE_KEYS, coco_detections, coco_metrics, encode_masks

H = W = 40


def _square(y0: int, x0: int, size: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def _gt(*squares: tuple[int, int, int], label: int = 1) -> dict:
    masks = np.stack([_square(*s) for s in squares]) if squares else np.zeros((0, H, W), bool)
    boxes = np.array([[x0, y0, x0 + s, y0 + s] for y0, x0, s in squares], np.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.full(len(squares), label), "masks": masks, "size": (H, W)}


def _pred(items: list[tuple[tuple[int, int, int], float]], label: int = 1) -> dict:
    g = _gt(*[s for s, _ in items], label=label)
    return {"boxes": torch.from_numpy(g["boxes"]), "labels": torch.from_numpy(g["labels"]),
            "scores": torch.tensor([score for _, score in items]),
            "masks": torch.from_numpy(g["masks"].astype(np.float32))[:, None] * 0.9}  # (M, 1, H, W) probabilities


def _box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_perfect_predictions_score_one() -> None:
    gts = [_gt((2, 3, 10), (20, 22, 12)), _gt((5, 5, 14))]
    preds = [_pred([((2, 3, 10), 0.9), ((20, 22, 12), 0.8)]), _pred([((5, 5, 14), 0.7)])]
    m = coco_metrics(preds, gts)
    assert set(m) == set(DETECTION_KEYS) | set(SIZE_KEYS)
    for key in DETECTION_KEYS:
        assert m[key] == pytest.approx(1.0), key
    assert m["box_ap_small"] == pytest.approx(1.0)  # every object is under 32² pixels
    assert math.isnan(m["box_ap_medium"]) and math.isnan(m["mask_ap_large"])  # no object of that size


def test_no_predictions_score_zero() -> None:
    gts = [_gt((2, 3, 10)), _gt((5, 5, 14))]
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0),
             "masks": np.zeros((0, 1, H, W))}
    m = coco_metrics([empty, dict(empty)], gts)
    for key in DETECTION_KEYS:
        assert m[key] == 0.0, key


def test_no_ground_truth_object_is_undefined() -> None:
    m = coco_metrics([_pred([((2, 3, 10), 0.9)])], [_gt()])
    assert all(math.isnan(m[k]) for k in DETECTION_KEYS)


def test_shift_with_iou_between_half_and_three_quarters() -> None:
    """A 10-pixel square shifted by 3 rows: IoU 70/130 for boxes and masks, so AP50 = 1 and AP75 = 0."""
    gt_box, pred_box = [0.0, 0.0, 10.0, 10.0], [0.0, 3.0, 10.0, 13.0]
    iou = _box_iou(gt_box, pred_box)
    assert iou == pytest.approx(70 / 130) and 0.5 <= iou < 0.55  # matched only at the 0.50 threshold
    gt_mask, pred_mask = _square(0, 0, 10), _square(3, 0, 10)
    assert (gt_mask & pred_mask).sum() / (gt_mask | pred_mask).sum() == pytest.approx(iou)
    m = coco_metrics([_pred([((3, 0, 10), 0.9)])], [_gt((0, 0, 10))])
    assert m["box_ap50"] == pytest.approx(1.0) and m["mask_ap50"] == pytest.approx(1.0)
    assert m["box_ap75"] == 0.0 and m["mask_ap75"] == 0.0
    # AP over IoU 0.50:0.05:0.95: matched at the first of the ten thresholds only
    assert m["box_ap"] == pytest.approx(0.1) and m["mask_ap"] == pytest.approx(0.1)


def test_score_ordering_matters() -> None:
    """One object, one true and one false detection: precision at full recall is 1 when the true one
    ranks first and 1/2 when the false one does (COCO's interpolated precision is then 1/2 everywhere)."""
    gts = [_gt((2, 2, 10))]
    good_first = coco_metrics([_pred([((2, 2, 10), 0.9), ((25, 25, 10), 0.3)])], gts)
    bad_first = coco_metrics([_pred([((2, 2, 10), 0.3), ((25, 25, 10), 0.9)])], gts)
    for key in DETECTION_KEYS:
        assert good_first[key] == pytest.approx(1.0), key
        assert bad_first[key] == pytest.approx(0.5), key


def test_categories_are_evaluated_separately() -> None:
    """A perfect box with the wrong category is a miss for the object and a false detection elsewhere."""
    gts = [_gt((2, 2, 10), label=1)]
    wrong = coco_metrics([_pred([((2, 2, 10), 0.9)], label=2)], gts)
    assert wrong["box_ap"] == 0.0 and wrong["mask_ap"] == 0.0
    # two categories, one found perfectly and one missed: the mean over categories is 1/2
    gts2 = [{k: np.concatenate([a[k], b[k]]) for k in ("boxes", "labels", "masks")}
            for a, b in [(_gt((2, 2, 10), label=1), _gt((20, 20, 10), label=2))]]
    half = coco_metrics([_pred([((2, 2, 10), 0.9)], label=1)], gts2)
    assert half["box_ap"] == pytest.approx(0.5) and half["mask_ap"] == pytest.approx(0.5)


def test_masks_are_scored_independently_of_boxes() -> None:
    """Right box, half of the mask: BoxAP 1, mask IoU 1/2 -> MaskAP50 = 1, MaskAP75 = 0."""
    pred = _pred([((0, 0, 10), 0.9)])
    half = np.zeros((1, 1, H, W), np.float32)
    half[0, 0, 0:5, 0:10] = 0.8
    pred["masks"] = half
    m = coco_metrics([pred], [_gt((0, 0, 10))])
    assert m["box_ap"] == pytest.approx(1.0)
    assert m["mask_ap50"] == pytest.approx(1.0) and m["mask_ap75"] == 0.0
    below = dict(pred, masks=half * 0.5)  # probabilities 0.4 < 0.5: an empty mask
    assert coco_metrics([below], [_gt((0, 0, 10))])["mask_ap50"] == 0.0


def test_results_format_round_trips_masks() -> None:
    from pycocotools import mask as mask_utils

    pred = _pred([((4, 6, 8), 0.75)])
    (det,) = coco_detections([pred], image_ids=[17])
    assert det["image_id"] == 17 and det["category_id"] == 1 and det["score"] == pytest.approx(0.75)
    assert det["bbox"] == [6.0, 4.0, 8.0, 8.0] and det["area"] == 64.0
    with warnings.catch_warnings():  # the compiled decoder trips a numpy-2 deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(det["segmentation"])
    assert np.array_equal(decoded.astype(bool), _square(4, 6, 8))
    assert encode_masks(np.zeros((0, H, W), bool)) == []
