"""Mask R-CNN inference and COCO BoxAP / MaskAP on validation images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medssl.data.detect import SampleStore
from medssl.data.layouts import CocoSample
from medssl.metrics.detection import coco_metrics
from medssl.tensors import eval_mode, to_numpy

__all__ = ["evaluate_detector", "predict_images"]


@torch.no_grad()
def predict_images(net: nn.Module, images: Sequence[Tensor], device: torch.device | str,
                   batch_size: int = 2) -> list[dict[str, np.ndarray]]:
    """Detections of ``net`` (eval mode) on (C, H, W) images: per image ``boxes`` (M, 4) xyxy pixels,
    ``scores`` (M,), ``labels`` (M,) model labels, ``masks`` (M, H, W) float32 probabilities."""
    out: list[dict[str, np.ndarray]] = []
    with eval_mode(net):
        for start in range(0, len(images), batch_size):
            chunk = [im.to(device) for im in images[start : start + batch_size]]
            for det in net(chunk):
                out.append({"boxes": to_numpy(det["boxes"].float()), "scores": to_numpy(det["scores"].float()),
                            "labels": to_numpy(det["labels"]), "masks": to_numpy(det["masks"][:, 0].float())})
    return out


def _ground_truth(sample: CocoSample, label_of: Mapping[int, int], category_ids: Sequence[int]) -> dict[str, Any]:
    h, w = sample.image.shape[:2]
    cats = np.array([category_ids[label_of[int(c)] - 1] for c in sample.category_ids], dtype=np.int64)
    masks = sample.masks if sample.masks is not None else None
    return {"boxes": sample.boxes, "labels": cats, "masks": masks, "iscrowd": sample.iscrowd, "size": (h, w)}


def evaluate_detector(
    net: nn.Module,
    store: SampleStore,
    indices: Sequence[int],
    category_ids: Sequence[int],
    device: torch.device | str,
    batch_size: int = 2,
) -> tuple[dict[str, float], list[dict[str, np.ndarray]], list[dict[str, Any]]]:
    """COCO metrics of ``net`` on the images ``indices`` of ``store``.

    Returns:
        (metrics of :func:`medssl.metrics.detection.coco_metrics`, predictions with COCO category ids as
        labels, ground truth), one entry per image in ``indices`` order.
    """
    preds: list[dict[str, np.ndarray]] = []
    gts: list[dict[str, Any]] = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        items = [store.get(i) for i in chunk]
        for (_, _, sample), det in zip(items, predict_images(net, [it[0] for it in items], device, batch_size),
                                       strict=True):
            det["labels"] = np.array([category_ids[int(lab) - 1] for lab in det["labels"]], dtype=np.int64)
            preds.append(det)
            gts.append(_ground_truth(sample, store.label_of, category_ids))
    return coco_metrics(preds, gts, category_ids=category_ids), preds, gts
