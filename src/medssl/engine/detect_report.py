"""What a detection run writes besides checkpoints: overlay figures, ``results.md`` and ``results.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.detect import DetectSplit
from medssl.engine.detect_config import DetectConfig
from medssl.errors import MedsslInputError
from medssl.metrics.detection import DETECTION_KEYS

__all__ = ["detection_overlay", "figure_indices", "json_metrics", "read_results", "results_markdown"]


def detection_overlay(
    image: np.ndarray,
    prediction: Mapping[str, Any],
    ground_truth: Mapping[str, Any] | None,
    out: str | Path,
    score_threshold: float = 0.5,
    title: str | None = None,
    names: Mapping[int, str] | None = None,
) -> Path:
    """Write a PNG of a (H, W) or (H, W, 3) image with predicted masks (filled) and boxes (dashed, with
    scores) from ``score_threshold`` up, and ground-truth outlines (solid contours and boxes).

    Args:
        prediction: ``boxes`` (M, 4) xyxy pixels, ``scores`` (M,), ``labels`` (M,), ``masks`` (M, H, W).
        ground_truth: ``boxes`` (N, 4) and ``masks`` (N, H, W) or None; ``labels`` name the objects.
        names: category id -> name for the labels drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from medssl.runtime.atomic import atomic_path
    from medssl.viz import GT_COLOUR, PRED_COLOUR

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    h, w = img.shape
    fig = Figure(figsize=(4.2, 4.2 * h / w + 0.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.08, 1.0, 0.84))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    keep = np.asarray(prediction["scores"]) >= score_threshold
    rgba = np.zeros((h, w, 4), np.float32)
    colour = np.array([int(PRED_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5)], np.float32)
    for k in np.flatnonzero(keep):
        if prediction.get("masks") is not None:
            m = np.asarray(prediction["masks"][k]) >= 0.5
            rgba[m, :3] = colour
            rgba[m, 3] = 0.45
        x0, y0, x1, y1 = (float(v) for v in prediction["boxes"][k])
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=PRED_COLOUR, lw=1.2, ls="--"))
        label = int(prediction["labels"][k])
        text = f"{names.get(label, label) if names else label} {float(prediction['scores'][k]):.2f}"
        ax.text(x0 - 0.5, y0 - 1.5, text, color=PRED_COLOUR, fontsize=7, va="bottom",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 0.8, "linewidth": 0})
    ax.imshow(rgba, interpolation="nearest")
    if ground_truth is not None:
        gt_masks = ground_truth.get("masks")
        for k, box in enumerate(np.asarray(ground_truth["boxes"]).reshape(-1, 4)):
            if gt_masks is not None and np.asarray(gt_masks[k]).any():
                ax.contour(np.asarray(gt_masks[k], np.float32), levels=[0.5], colors=[GT_COLOUR], linewidths=1.0)
            x0, y0, x1, y1 = (float(v) for v in box)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=GT_COLOUR, lw=0.8))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    handles = [Line2D([], [], color=GT_COLOUR, lw=2, label="ground truth"),
               Line2D([], [], color=PRED_COLOUR, lw=2, ls="--", label=f"prediction (score >= {score_threshold:g})")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, y=0.985)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
    return out



def figure_indices(split: DetectSplit, count: int) -> list[int]:
    """Up to ``count`` validation images, those with objects first (in validation order)."""
    with_objects = [i for i in split.indices if split.dataset.annotations(i)]
    others = [i for i in split.indices if not split.dataset.annotations(i)]
    return (with_objects + others)[:count]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def json_metrics(metrics: Mapping[str, float] | None) -> dict[str, float | None] | None:
    if metrics is None:
        return None
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}


def results_markdown(cfg: DetectConfig, summary: Mapping[str, Any]) -> str:
    init = summary["init"]["path"] if summary["init"] else "none (trained from scratch)"
    lines = [f"# Mask R-CNN fine-tuning: {cfg.runtime.name}", "",
             f"- model: Mask R-CNN {cfg.model.backbone}-FPN, {summary['in_chans']} input channel(s), "
             f"norm {cfg.model.norm}, trainable stages {cfg.model.trainable_layers}",
             f"- encoder init: {init}",
             f"- training: {summary['iterations']} iterations ({summary['epochs']:.2f} epochs of "
             f"{summary['train_images']} images), lr {summary['lr']:g} for a batch of {summary['total_batch']}",
             f"- validation: {summary['val_images']} images ({summary['val_source']})", ""]
    rows = []
    if summary.get("final") is not None:
        rows.append((f"final (iteration {summary['final']['iteration']})", summary["final"]["metrics"]))
    if summary.get("best") is not None:
        rows.append((f"best (selected on validation by {cfg.select_metric}, iteration "
                     f"{summary['best']['iteration']})", summary["best"]["metrics"]))
    if not rows:
        lines.append("No validation metrics (no validation images or evaluation turned off).")
        return "\n".join(lines) + "\n"
    lines += ["COCO AP in percent (IoU 0.50:0.95; AP50 / AP75 at IoU 0.50 / 0.75).", "",
              "| model | BoxAP | BoxAP50 | BoxAP75 | MaskAP | MaskAP50 | MaskAP75 |",
              "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in DETECTION_KEYS) + " |")
    if summary.get("best") is not None:
        lines += ["", "The best checkpoint is chosen on the validation images it is scored on, so its numbers "
                  "are optimistic; the final model is the unbiased result."]
    return "\n".join(lines) + "\n"


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a detection run."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise MedsslInputError(path, "no results.json (the run has not finished)")
    return json.loads(path.read_text(encoding="utf-8"))
