"""COCO detection and instance-segmentation metrics: BoxAP and MaskAP through pycocotools.

Both inputs are lists with one entry per image, in the same order:

* ground truth: ``{"boxes": (N, 4) x0, y0, x1, y1 in pixels, "labels": (N,) category ids,
  "masks": (N, H, W) nonzero = inside (optional), "iscrowd": (N,) bool (optional),
  "size": (H, W) (optional when masks are given)}``;
* predictions: ``{"boxes": (M, 4), "scores": (M,), "labels": (M,), "masks": (M, H, W) or
  (M, 1, H, W) binary masks or probabilities (optional)}``, the format torchvision detectors return.

Arrays may be numpy arrays or tensors. Boxes are continuous pixel coordinates (a pixel ``(r, c)``
covers ``[c, c + 1) x [r, r + 1)``); a mask probability counts as inside at ``>= mask_threshold``.

The numbers are those of the official COCO evaluation (``COCOeval``: IoU thresholds 0.50:0.05:0.95,
101-point interpolated precision, at most 100 detections per image, area ranges small < 32² <=
medium < 96² <= large pixels): ``box_ap`` is COCO "bbox" AP, ``mask_ap`` COCO "segm" AP, both in
[0, 1]. As in COCO, a category without any ground-truth object does not count towards the mean;
a value is NaN when it is undefined (no ground-truth object at all, none of that size, or mask
metrics without masks on both sides).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medssl.tensors import to_numpy

__all__ = [
    "DETECTION_KEYS",
    "SIZE_KEYS",
    "binary_masks",
    "coco_detections",
    "coco_ground_truth",
    "coco_metrics",
    "encode_masks",
]

#: The headline metrics, in report order.
DETECTION_KEYS: tuple[str, ...] = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")
#: AP per object size (COCO area ranges), also returned by :func:`coco_metrics`.
SIZE_KEYS: tuple[str, ...] = ("box_ap_small", "box_ap_medium", "box_ap_large",
                              "mask_ap_small", "mask_ap_medium", "mask_ap_large")

# Positions of the values in COCOeval.stats.
_STAT_INDEX = {"ap": 0, "ap50": 1, "ap75": 2, "ap_small": 3, "ap_medium": 4, "ap_large": 5}


def binary_masks(masks: Any, threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) bool masks from (N, H, W) or (N, 1, H, W) binary masks or probabilities (``>= threshold``)."""
    arr = to_numpy(masks)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W) or (N, 1, H, W), got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    return arr >= threshold


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLEs (``{"size": [H, W], "counts": str}``) of (N, H, W) boolean masks."""
    from pycocotools import mask as mask_utils

    out = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(rle)
    return out


def _xywh(boxes: Any) -> np.ndarray:
    b = to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def _size(entry: Mapping[str, Any], key: str = "masks") -> tuple[int, int]:
    if entry.get("size") is not None:
        h, w = (int(v) for v in entry["size"])
        return h, w
    masks = entry.get(key)
    if masks is not None:
        shape = to_numpy(masks).shape
        return int(shape[-2]), int(shape[-1])
    return 0, 0


def coco_ground_truth(ground_truth: Sequence[Mapping[str, Any]], category_ids: Sequence[int],
                      image_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """A COCO instances dictionary (``images``, ``annotations``, ``categories``) of per-image ground truth.

    Annotation areas are mask areas (pixels) when masks are given, box areas otherwise (as in COCO).
    """
    ids = list(image_ids) if image_ids is not None else list(range(1, len(ground_truth) + 1))
    images, annotations = [], []
    for image_id, gt in zip(ids, ground_truth, strict=True):
        h, w = _size(gt)
        images.append({"id": int(image_id), "height": h, "width": w})
        boxes = _xywh(gt["boxes"])
        labels = to_numpy(gt["labels"]).reshape(-1)
        crowd = to_numpy(gt["iscrowd"]).reshape(-1) if gt.get("iscrowd") is not None else np.zeros(len(boxes), bool)
        masks = binary_masks(gt["masks"]) if gt.get("masks") is not None and len(boxes) else None
        rles = encode_masks(masks) if masks is not None else [None] * len(boxes)
        for k in range(len(boxes)):
            ann = {"id": len(annotations) + 1, "image_id": int(image_id), "category_id": int(labels[k]),
                   "bbox": [float(v) for v in boxes[k]], "iscrowd": int(bool(crowd[k])),
                   "area": float(masks[k].sum()) if masks is not None else float(boxes[k, 2] * boxes[k, 3])}
            if rles[k] is not None:
                ann["segmentation"] = rles[k]
            annotations.append(ann)
    return {"images": images, "annotations": annotations,
            "categories": [{"id": int(c), "name": str(c)} for c in category_ids]}


def coco_detections(predictions: Sequence[Mapping[str, Any]], image_ids: Sequence[int] | None = None,
                    masks: bool = True, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Predictions in the COCO results format: ``image_id``, ``category_id``, ``bbox`` (x, y, w, h),
    ``score`` and, when ``masks`` and the prediction has masks, ``segmentation`` (compressed RLE).

    ``area`` is added as COCO's loader computes it: the box area, or the mask area with masks.
    """
    ids = list(image_ids) if image_ids is not None else list(range(1, len(predictions) + 1))
    results = []
    for image_id, pred in zip(ids, predictions, strict=True):
        boxes = _xywh(pred["boxes"])
        scores = to_numpy(pred["scores"]).reshape(-1)
        labels = to_numpy(pred["labels"]).reshape(-1)
        if not len(boxes):
            continue
        use_masks = masks and pred.get("masks") is not None
        bin_masks = binary_masks(pred["masks"], mask_threshold) if use_masks else None
        rles = encode_masks(bin_masks) if bin_masks is not None else None
        for k in range(len(boxes)):
            det = {"image_id": int(image_id), "category_id": int(labels[k]),
                   "bbox": [float(v) for v in boxes[k]], "score": float(scores[k])}
            if rles is not None and bin_masks is not None:
                det["segmentation"] = rles[k]
                det["area"] = float(bin_masks[k].sum())
            else:
                det["area"] = float(boxes[k, 2] * boxes[k, 3])
            results.append(det)
    return results


def _cocoeval_stats(gt_dict: dict[str, Any], detections: list[dict[str, Any]], iou_type: str) -> np.ndarray:
    """COCOeval summary statistics (12 values, -1 where undefined) without its console output."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy-2 notices from the compiled decoder
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = COCO()
        anns = []
        for k, det in enumerate(detections, start=1):
            ann = dict(det, id=k, iscrowd=0)
            if iou_type == "bbox":  # as COCO loads box results: no mask, box area
                ann.pop("segmentation", None)
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            anns.append(ann)
        dt.dataset = {"images": gt_dict["images"], "annotations": anns, "categories": gt_dict["categories"]}
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def _stats_dict(prefix: str, stats: np.ndarray | None) -> dict[str, float]:
    out = {}
    for name, idx in _STAT_INDEX.items():
        value = float(stats[idx]) if stats is not None else math.nan
        out[f"{prefix}_{name}"] = value if value >= 0 else math.nan
    return out


def coco_metrics(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int] | None = None,
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """COCO BoxAP and MaskAP of per-image predictions against per-image ground truth.

    Args:
        predictions: one dict per image (see the module docstring), torchvision detector outputs.
        ground_truth: one dict per image, same order and length as ``predictions``.
        category_ids: the categories evaluated (default: every label present in the ground truth).
            Predictions of other categories are ignored.
        mask_threshold: mask probabilities at or above it count as inside.

    Returns:
        ``box_ap, box_ap50, box_ap75, mask_ap, mask_ap50, mask_ap75`` (:data:`DETECTION_KEYS`) and the AP
        per object size (:data:`SIZE_KEYS`), each in [0, 1] or NaN when undefined. Mask metrics need masks
        in every ground-truth entry that has objects and in every prediction that has detections.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction entries for {len(ground_truth)} ground-truth images")
    if category_ids is None:
        found: set[int] = set()
        for gt in ground_truth:
            found.update(int(v) for v in to_numpy(gt["labels"]).reshape(-1))
        category_ids = sorted(found)
    gt_has_masks = all(gt.get("masks") is not None or not len(to_numpy(gt["labels"]).reshape(-1)) for gt in ground_truth)
    pred_has_masks = all(p.get("masks") is not None or not len(to_numpy(p["scores"]).reshape(-1)) for p in predictions)
    with_masks = gt_has_masks and pred_has_masks
    gts = [dict(gt) for gt in ground_truth]
    for gt, pred in zip(gts, predictions, strict=True):
        if with_masks and gt.get("size") is None and gt.get("masks") is None and pred.get("masks") is not None:
            gt["size"] = _size(pred)  # an image without objects: its size from the prediction
    gt_dict = coco_ground_truth(gts, category_ids)
    has_objects = bool(gt_dict["annotations"]) and bool(category_ids)
    detections = coco_detections(predictions, masks=with_masks, mask_threshold=mask_threshold)
    box = _cocoeval_stats(gt_dict, detections, "bbox") if has_objects else None
    segm = _cocoeval_stats(gt_dict, detections, "segm") if has_objects and with_masks else None
    metrics = {**_stats_dict("box", box), **_stats_dict("mask", segm)}
    return {key: metrics[key] for key in (*DETECTION_KEYS, *SIZE_KEYS)}
